"""Triton's generate extension (``/v2/models/{model}/generate[_stream]``) and the KServe v2 protocol
(``/v2/health/*``, ``/v2``, ``/v2/models/{model}[/versions/1][/ready|/infer]``)."""
