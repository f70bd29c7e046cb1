"""Talking with a model: the terminal chat (``repl``), the Gradio web demo (``web``), the conversation rules
they share (``session``, ``transcript``, ``boxes``) and attention pictures (``attention``, ``heatmap``)."""
