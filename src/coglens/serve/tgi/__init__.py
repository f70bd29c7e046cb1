"""Text Generation Inference protocol (``/generate``, ``/generate_stream`` and the compat route ``/``)."""
