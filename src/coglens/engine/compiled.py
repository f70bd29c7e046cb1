"""The decode step's forward pass, run eagerly or through ``torch.compile``.

Compiled on CPU: inductor, with its pass that turns a one-row matrix product into a fused multiply-reduce loop
(a batch-1 decode step is a chain of matrix-vector products, which that loop streams faster than the BLAS call).
Compiled on CUDA: inductor with CUDA graphs (``mode="reduce-overhead"``): one graph launch per step instead of
hundreds of kernel launches. Rows and columns are bucketed (see :mod:`coglens.engine.slots`) and the column count
is a dynamic dimension, so a handful of graphs serve a session.

A step runs eagerly whenever a forward hook or pre-hook sits on a module the step runs (the lens's captures and
interventions), or accelerate has wrapped one (``device_map`` offloading): a compiled graph would not call hooks
registered after it was traced. The lens therefore always sees the uncompiled step, by design; the tokens are the
same.

``compile="auto"`` (``coglens serve``'s default) compiles where it is a measured win: on the CPU (see
``benchmarks/README.md``); CUDA graphs are implemented but were not measured on a GPU here, so CUDA needs
``compile=True``. Compiling sets two process-wide torch settings: dynamo's recompile limit (raised to
``RECOMPILE_LIMIT``) and the limits of inductor's matrix-vector decomposition.
"""

from __future__ import annotations

import logging
import shutil
import sys
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as module_globals

from .slots import DecodeSlots, StepWindow

logger = logging.getLogger(__name__)

RECOMPILE_LIMIT = 32  # graphs per step function: batch buckets x (static, dynamic columns), with room to spare


def cxx_compiler() -> str | None:
    """The C++ compiler inductor will call on CPU (its ``cpp.cxx`` setting: ``$CXX`` when torch was imported,
    else g++, or clang++ on macOS; ``cl`` on Windows), if it is installed."""
    from torch._inductor import config

    names = [name for name in config.cpp.cxx if name] + (["cl"] if sys.platform == "win32" else [])
    return next((path for name in names if (path := shutil.which(name))), None)


def _install_hint() -> str:
    if sys.platform == "darwin":
        return "install the Xcode command line tools (xcode-select --install)"
    if sys.platform == "win32":
        return "install the Visual Studio Build Tools (C++ workload) and run from a developer prompt"
    return "install a C++ compiler (Debian/Ubuntu: apt install g++; Fedora: dnf install gcc-c++) or set $CXX"


def _cpu_options() -> dict[str, Any]:
    """Inductor's matrix-vector decomposition for every size (its defaults stop at 2048 columns, which leaves out
    the MLP and the LM head). The pass reads its limits when first imported; set them on the module as well, in
    case an earlier compilation in this process imported it with the defaults."""
    limits = {"cpu_max_first_dimension_decomposition": 1, "cpu_max_other_dimension_decomposition": 2**31 - 1}
    try:
        from torch._inductor.fx_passes import decompose_mem_bound_mm as decomposition

        for name, value in limits.items():
            if hasattr(decomposition, name):
                setattr(decomposition, name, value)
    except ImportError:  # another torch layout: compile without the decomposition
        return {}
    return {"post_grad_fusion_options": {"decompose_mm_pass": limits}}


def _decode_logits(model: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor,
                   attention_mask: torch.Tensor, cache: DecodeSlots) -> torch.Tensor:
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                past_key_values=cache, use_cache=True)
    return out.logits[:, -1]


class DecodeStep:
    """One decode forward: ``compile=True`` compiles it (see the module's notes); the eager path is the model's
    own forward, through ``forward`` (the engine's, which knows about adapters)."""

    def __init__(self, model: nn.Module, device: torch.device, *, compile: bool | str, adapters: Any = None) -> None:
        if compile not in (True, False, "auto"):
            raise ValueError(f"compile={compile!r}: use True, False or 'auto'")
        self.model = model
        self.device = device
        self._enabled = compile is True or (compile == "auto" and device.type == "cpu")
        self._compiled: Any = None
        # the modules a decode step runs (not the vision tower): where a hook would have to fire
        self._watched = [m for name, m in model.named_modules() if ".vision." not in f".{name}."]
        if self._enabled:
            self._compiled = self._build(adapters, asked=compile is True)

    def _build(self, adapters: Any, *, asked: bool) -> Any:
        """The compiled function, or None where the step stays uncompiled (a warning says why when compiling was
        asked for; with ``"auto"`` an info line)."""
        why = None
        if self.device.type not in ("cpu", "cuda"):
            why = f"compiling is implemented for CPU and CUDA, not {self.device.type}"
        elif adapters is not None:
            why = "LoRA adapters served side by side pick their weights per row at run time, which is not compiled"
        elif getattr(self.model, "hf_quantizer", None) is not None:
            why = "quantized weights (bitsandbytes, torchao) run kernels that are not compiled here"
        elif self.device.type == "cpu" and cxx_compiler() is None:
            why = f"torch.compile needs a C++ compiler on CPU and none was found; to compile, {_install_hint()}"
        if why is not None:
            logger.log(logging.WARNING if asked else logging.INFO, "the decode step runs uncompiled: %s.", why)
            self._enabled = False
            return None
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        if self.device.type == "cuda":
            return torch.compile(_decode_logits, mode="reduce-overhead", fullgraph=True)
        return torch.compile(_decode_logits, fullgraph=True, options=_cpu_options())

    @property
    def compiled(self) -> bool:
        """Whether steps run compiled (False when compile was off, or fell back)."""
        return self._enabled

    def use_compiled(self) -> bool:
        """Compiled for this step: enabled, and no hook anywhere on the step's modules."""
        if not self._enabled:
            return False
        if module_globals._global_forward_hooks or module_globals._global_forward_pre_hooks:
            return False
        return not any(m._forward_hooks or m._forward_pre_hooks or hasattr(m, "_hf_hook") for m in self._watched)

    def run_compiled(self, slots: DecodeSlots, window: StepWindow) -> torch.Tensor | None:
        """(B, vocab) float32 logits of a bucketed window, or None if compiling failed (then the step is
        disabled and the caller runs it eagerly: nothing was written that the eager step does not rewrite)."""
        _mark_dynamic_columns(window.attention_mask)
        try:
            return self._compiled(self.model, window.input_ids, window.position_ids, window.attention_mask, slots)
        except torch.OutOfMemoryError:
            raise  # the step's own failure, not the compiler's: the engine's usual error path
        except Exception as exc:  # a compiler failure must not take down generation; the uncompiled step works
            logger.warning("--compile: compiling the decode step failed (%s: %s); decoding uncompiled from now on",
                           type(exc).__name__, exc)
            self._enabled = False
            return None


def _mark_dynamic_columns(mask: torch.Tensor) -> None:
    """The column count changes from bucket to bucket: one graph per row bucket serves them all."""
    if mask.shape[1] > 1:
        torch._dynamo.mark_dynamic(mask, 1)
