"""OpenAI-compatible chat completions (``/v1/chat/completions``, ``/v1/models``)."""
