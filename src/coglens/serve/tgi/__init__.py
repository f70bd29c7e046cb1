"""Text Generation Inference protocol (``/generate``, ``/generate_stream``, the compat route ``/`` and ``/info``)."""
