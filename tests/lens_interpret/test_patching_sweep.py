"""``patching_sweep``: values known without the sweep's code (the last layer only reaches the logits through its
last position: exactly 1 there and 0 elsewhere), and what it refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coglens.lens.intervene import InterventionError, patching_sweep, render_sweep

IMAGES = Path(__file__).resolve().parents[2] / "examples/images"
QUERY = "What colour is the shape?"


def test_the_last_layer_recovers_exactly_at_the_last_position_only(tiny_pipeline):
    clean = {"query": QUERY, "images": [str(IMAGES / "red_circle.png")]}
    corrupted = {"query": QUERY, "images": [str(IMAGES / "blue_square.png")]}
    sweep = patching_sweep(tiny_pipeline, clean, corrupted)
    assert sweep.layers == [0, 1] and sweep.columns[0] == "image" and sweep.columns[-1] == ":"
    last = np.zeros(len(sweep.columns))
    last[-1] = 1.0
    np.testing.assert_allclose(sweep.recovery[-1], last, atol=1e-5)
    assert np.abs(sweep.recovery[0]).max() > 0.05  # at the first layer, patching some position matters
    picture = render_sweep(sweep)
    assert picture.size == (80 + 70 * len(sweep.columns), 2 * 26 + 3 * 26)
    assert sweep.to_dict()["recovery"][1][-1] == pytest.approx(1.0, abs=1e-5)


def test_prompts_that_cannot_be_compared_are_refused(tiny_pipeline):
    red = {"query": QUERY, "images": [str(IMAGES / "red_circle.png")]}
    with pytest.raises(InterventionError, match="same token layout"):
        patching_sweep(tiny_pipeline, red, {"query": "Colour?", "images": [str(IMAGES / "blue_square.png")]})
    with pytest.raises(InterventionError, match="no difference to recover"):
        patching_sweep(tiny_pipeline, red, red)
    with pytest.raises(InterventionError, match="layers \\[5\\] do not exist"):
        patching_sweep(tiny_pipeline, red, red, layers=[5])
