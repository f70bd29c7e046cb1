"""CogLens: run, serve and look inside the CogVLM family of vision-language models."""

__version__ = "0.1.0"
