"""Triton's generate extension (``/v2/models/{model}/generate`` and ``/generate_stream``)."""
