"""Quantized loading: the ``--quantize`` schemes, the transformers configs behind them, and quality metrics.

Light to import (no torch or transformers at module level): the ``coglens`` command builds its choices from
:data:`SCHEMES`. Which library runs each scheme, and why:

* ``int8``: on CUDA, bitsandbytes LLM.int8 (transformers' standard 8-bit path, with its outlier handling); on a
  CPU, torchao's int8 weight-only (per-row scales), which keeps the activations in the model's dtype (bitsandbytes
  casts them to float16 on a CPU) and decodes faster than bf16 there.
* ``int4``: torchao's int4 weight-only with the tinygemm layout (groups of 128, bfloat16): CUDA only, because
  torchao has no CPU kernel for it with this torch; on a CPU the error offers ``nf4``.
* ``nf4`` / ``fp4``: bitsandbytes 4-bit with double quantization (runs on CUDA and on a CPU).

By default the vision tower (with its GLU adapter) and ``lm_head`` stay in full precision: each model class
declares them in ``_skip_quantization_modules`` and :func:`coglens.modeling.loading.load_pretrained` writes that
list into the config's own skip list (``llm_int8_skip_modules`` / ``modules_to_not_convert``), which is what
transformers reads and what ``save_pretrained`` stores, so a saved checkpoint loads back with the same layout.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

SCHEMES = ("int8", "int4", "nf4", "fp4")
INSTALL_HINT = "pip install 'coglens[quant]'"
_INT4_GROUP_SIZE = 128  # torchao's default; every CogVLM linear's input size is a multiple of it


class QuantizationError(ValueError):
    """A scheme that cannot run: unknown, its library missing, or not available on the device."""


def quantization_config(
    scheme: str, *, device: Any = None, quantize_vision: bool = False, compute_dtype: str | None = None
) -> Any:
    """transformers' quantization config for ``scheme`` (one of :data:`SCHEMES`) on ``device``.

    ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device``; ``None`` means CUDA when it is
    available, else the CPU (what ``device_map="auto"`` picks). ``quantize_vision=True`` quantizes the vision
    tower, its adapter and ``lm_head`` too (an empty skip list); otherwise the skip list is left to the model
    class (``None``). ``compute_dtype`` (nf4/fp4 only): the dtype the 4-bit matmuls run in; default bfloat16 on
    CUDA, float32 elsewhere (a CPU without bf16 units runs float32 matmuls faster).
    """
    if scheme not in SCHEMES:
        raise QuantizationError(f"unknown quantization scheme {scheme!r}; choose one of: {', '.join(SCHEMES)}")
    kind = _device_type(device)
    skip: list[str] | None = [] if quantize_vision else None
    if scheme == "int4":
        if kind != "cuda":
            raise QuantizationError(
                f"int4 (torchao int4 weight-only) needs a CUDA GPU: torchao has no {kind} kernel for it; on {kind} "
                "use nf4 (4-bit, bitsandbytes) or int8"
            )
        return _torchao(scheme, "Int4WeightOnlyConfig", skip, group_size=_INT4_GROUP_SIZE,
                        int4_packing_format="tile_packed_to_4d")
    if scheme == "int8" and kind != "cuda":
        return _torchao(scheme, "Int8WeightOnlyConfig", skip)
    _require("bitsandbytes", scheme)
    from transformers import BitsAndBytesConfig

    if scheme == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=scheme, bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype or ("bfloat16" if kind == "cuda" else "float32"),
        llm_int8_skip_modules=skip,
    )


def with_default_skips(config: Any, skip: list[str]) -> Any:
    """A copy of ``config`` whose skip list is ``skip`` when it has none (``None``); an explicit list, empty
    included, is the caller's choice and stays."""
    import copy

    field = "llm_int8_skip_modules" if hasattr(config, "llm_int8_skip_modules") else "modules_to_not_convert"
    if getattr(config, field, None) is not None:
        return config
    config = copy.deepcopy(config)
    setattr(config, field, list(skip))
    return config


def quantize_checkpoint(
    source: str | Path, out_dir: str | Path, scheme: str, *, device: Any = None, quantize_vision: bool = False
) -> Path:
    """Load ``source`` quantized with ``scheme``, write it pre-quantized to ``out_dir`` (transformers'
    ``save_pretrained``: config.json carries the ``quantization_config``) and copy its tokenizer files along,
    so the folder loads, serves and chats as it is."""
    from .loading import save_next_to
    from .modeling_cogvlm import CogvlmForCausalLM

    source, out = Path(source), Path(out_dir)
    if out.exists() and any(out.iterdir()):  # save_pretrained would delete the shards of a checkpoint there
        raise QuantizationError(f"{out} is not empty; write the quantized checkpoint to a new folder")
    model = CogvlmForCausalLM.from_pretrained(
        source, quantization_config=quantization_config(scheme, device=device, quantize_vision=quantize_vision)
    )
    return save_next_to(model, source, out)


def compare_next_token(ref_logits: Any, test_logits: Any) -> dict[str, float]:
    """How far ``test_logits`` strays from ``ref_logits`` (same shape, ``(..., vocab)``), over all positions:
    ``top1_agreement`` (fraction of positions with the same argmax), ``kl_mean`` / ``kl_max`` (KL(ref || test)
    of the next-token distributions, in nats)."""
    import torch

    if ref_logits.shape != test_logits.shape:
        raise ValueError(f"logits of different shapes: {tuple(ref_logits.shape)} vs {tuple(test_logits.shape)}")
    ref = torch.log_softmax(ref_logits.float().flatten(0, -2), dim=-1)
    test = torch.log_softmax(test_logits.float().flatten(0, -2), dim=-1)
    kl = torch.nn.functional.kl_div(test, ref, log_target=True, reduction="none").sum(-1)
    return {
        "top1_agreement": (ref.argmax(-1) == test.argmax(-1)).float().mean().item(),
        "kl_mean": kl.mean().item(),
        "kl_max": kl.max().item(),
    }


def greedy_match_length(ref_tokens: Any, test_tokens: Any) -> int:
    """How many leading tokens two generated sequences share (the greedy decode's agreement)."""
    ref, test = list(ref_tokens), list(test_tokens)
    n = 0
    while n < min(len(ref), len(test)) and int(ref[n]) == int(test[n]):
        n += 1
    return n


def _device_type(device: Any) -> str:
    if device is None:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device).split(":")[0]


def _require(library: str, scheme: str) -> None:
    if importlib.util.find_spec(library) is None:
        raise QuantizationError(
            f"--quantize {scheme} needs {library}, which is not installed: {INSTALL_HINT}"
        )


def _torchao(scheme: str, name: str, skip: list[str] | None, **options: Any) -> Any:
    _require("torchao", scheme)
    import torchao.quantization
    from transformers import TorchAoConfig

    # set_inductor_config=False: quantizing must not retune torch.compile globally (torchao's default does)
    config = getattr(torchao.quantization, name)(set_inductor_config=False, **options)
    return TorchAoConfig(config, modules_to_not_convert=skip)
