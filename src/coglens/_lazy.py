"""Lazy package exports (PEP 562): a package's public names are imported from their modules on first use.

So importing a package, or one of its light modules (``coglens.processing.template``, ``coglens.tiny.variants``,
``coglens.lens.store.formats``, ``coglens.modeling.dtypes``...), loads nothing heavy: the ``coglens`` command
builds its options from those modules without torch, transformers or numpy.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for ``package``, whose ``exports`` map a module (relative,
    e.g. ``".processor"``) to the public names it defines."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name], package), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__, sorted(where)
