"""vLLM's simple API server protocol (``POST /generate`` with a ``prompt``)."""
