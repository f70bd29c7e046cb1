"""Silence import-time notices of optional libraries that say nothing about what the user asked for.

transformers imports torchao whenever it is installed (the ``quant`` extra), and torchao then logs, on every
``coglens`` command and without a handler of anyone's (Python's last-resort handler prints them), that its CUDA
kernels cannot load on a CPU machine, that Triton is missing, and torch's deprecation of how it registers enums.
The records are dropped by exact text, so every other warning of these libraries still shows.
"""

from __future__ import annotations

import logging

_NOTICES = {
    "torchao": ("Failed to load ",),
    "torchao.kernel.intmm": ("Warning: Detected no triton",),
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported by torch.compile",),
}


class _DropNotices(logging.Filter):
    def __init__(self, texts: tuple[str, ...]) -> None:
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self.texts)


def install() -> None:
    for name, texts in _NOTICES.items():
        logging.getLogger(name).addFilter(_DropNotices(texts))
