"""OpenAI-compatible chat and legacy completions (``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``)."""
