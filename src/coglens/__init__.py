"""CogLens: run, serve and look inside the CogVLM family of vision-language models.

``import coglens`` is cheap: the modeling classes (and with them torch and transformers) load on first use of a
name below (PEP 562), so ``coglens --help`` answers at once.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

from . import _quiet
from ._lazy import lazy_exports

__version__ = "0.1.0"
_quiet.install()

__getattr__, __dir__, _lazy_names = lazy_exports(__name__, {
    ".modeling": ("Cogvlm2Config", "Cogvlm2VideoConfig", "CogvlmConfig", "CogvlmForCausalLM", "CogvlmModel",
                  "CogvlmVisionConfig", "register_auto_classes"),
    ".processing": ("CogvlmImageProcessor", "CogvlmProcessor"),
})
__all__ = [*_lazy_names, "__version__"]


# Auto-class registration. ``import coglens`` has always made transformers' AutoConfig / AutoModelForCausalLM
# resolve the cogvlm model types, but registering imports coglens.modeling, hence torch (seconds). So it runs as
# soon as transformers is imported: at once if it already is, else from a one-shot import hook that wraps the
# loader of transformers. When a coglens module is the one importing transformers (coglens.modeling does), it
# is half-initialised at that moment and registering would import it again, so the hook also wraps the loaders
# of coglens's modules and registers at the end of the outermost one.
_executing: list[str] = []  # watched modules whose code is running now
_finding: set[str] = set()  # guards find_spec below against asking this finder again


def _watched(name: str) -> bool:
    return name == "transformers" or name.startswith("coglens.")


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if not _watched(name) or name in _finding:
            return None
        _finding.add(name)
        try:
            spec = importlib.util.find_spec(name)  # what the other finders would return
        finally:
            _finding.discard(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            _executing.append(name)
            try:
                run(module)
            finally:
                _executing.remove(name)
            if "transformers" in sys.modules and not any(_watched(other) for other in _executing):
                _register()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]  # this spec's loader only
        return spec


_HOOK = _RegisterAfterImport()


def _register() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)  # first: the imports below must not re-enter the hook
    from .modeling import register_auto_classes

    register_auto_classes()


if "transformers" in sys.modules:
    _register()
else:
    sys.meta_path.insert(0, _HOOK)
