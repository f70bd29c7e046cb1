"""Interpretability tools on a loaded :class:`coglens.pipeline.Pipeline`: how much an answer attends to each
image patch (``attention``) and that grid as a heat map over the image (``heatmap``), behind ``coglens explain``."""
