"""Talking with a model: the terminal chat (``repl``), the Gradio web demo (``web``) and the conversation rules
they share (``session``, ``transcript``, ``boxes``)."""
