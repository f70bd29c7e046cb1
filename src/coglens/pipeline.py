"""One object that holds a loaded model, its tokenizer and an engine: what every command starts from.

``Pipeline.load()`` with no path uses the built-in tiny checkpoint, so everything runs offline on a CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .engine import Engine, GenerationRequest, GenerationResult, SamplingParams, TokenEvent
from .hub import resolve_checkpoint
from .modeling import CogvlmForCausalLM
from .tiny.variants import DEFAULT_TINY_MODEL, DEFAULT_TINY_VARIANT, TINY_PREFIX

logger = logging.getLogger(__name__)


def pick_device(device: str | None, *, cuda_index: int | None = None) -> torch.device:
    """``None``/"auto" -> CUDA if present, else Apple MPS, else CPU. `cuda_index`: the GPU that CUDA without an
    index stands for (under torchrun, the process's LOCAL_RANK); None leaves it to torch's current GPU."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", cuda_index)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N, mps or auto") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this machine has no CUDA GPU; use --device cpu")
    return torch.device("cuda", cuda_index) if dev.type == "cuda" and dev.index is None else dev


def resolve_model_path(model: str | Path | None, variant: str = DEFAULT_TINY_VARIANT) -> Path:
    """``None``/``tiny:VARIANT``: a built-in tiny checkpoint; a folder; or a hub id resolved through the HF cache
    (downloaded when online; ``HF_HUB_OFFLINE=1`` uses the cache only)."""
    if model is None:
        from .tiny import tiny_model_path

        return tiny_model_path(variant)
    if str(model).startswith(TINY_PREFIX):
        from .tiny import tiny_model_path

        return tiny_model_path(str(model).removeprefix(TINY_PREFIX))
    return resolve_checkpoint(model)


@dataclass
class Pipeline:
    model: CogvlmForCausalLM
    tokenizer: Any
    engine: Engine
    model_path: Path

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        *,
        tokenizer: str | Path | None = None,
        dtype: str | torch.dtype | None = None,
        device: str | None = None,
        device_map: Any = None,
        max_batch_size: int = 8,
        cuda_index: int | None = None,
        quantize: str | None = None,
        quantize_vision: bool = False,
        adapter: str | Path | None = None,
        adapters: Mapping[str, str | Path] | None = None,
        compile: bool | str = False,
    ) -> Pipeline:
        """Load a checkpoint folder (or ``tiny:VARIANT``; ``None`` = the tiny CogVLM2) with its tokenizer; `device`
        and `cuda_index` as :func:`pick_device` takes them.

        `quantize` (one of :data:`~coglens.modeling.quantization.SCHEMES`) quantizes the weights while loading;
        `quantize_vision` quantizes the vision tower, adapter and ``lm_head`` too. A checkpoint saved quantized
        loads quantized without `quantize`; asking to quantize it again is an error (its scheme is fixed).

        `adapter` (a PEFT adapter folder) is merged into the weights. `adapters` (name -> folder) are loaded side by
        side, unmerged, for the engine to apply per request (``GenerationRequest.adapter``), as a server does.

        `compile` compiles the engine's decode step (see :mod:`coglens.engine.compiled`).
        """
        from .processing.tokenizer import load_tokenizer

        if device_map is None:
            dev = pick_device(device, cuda_index=cuda_index)
            if dtype is None:
                dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
            placement: Any = dev
        else:
            dev, placement = None, device_map
        quantized = _quantization_kwargs(quantize, quantize_vision, dev)  # fails before any download
        if adapter is not None:
            adapter = _check_adapter(adapter, quantize)
            if adapters:
                from .modeling.adapters import AdapterError

                raise AdapterError("give one adapter to merge (adapter) or adapters to serve side by side "
                                   "(adapters), not both")
        path = resolve_model_path(model)
        loaded = CogvlmForCausalLM.from_pretrained(path, torch_dtype=dtype, device_map=placement, **quantized)
        if adapter is not None:
            from .modeling.adapters import AdapterError, apply_adapter

            if getattr(loaded, "hf_quantizer", None) is not None:
                raise AdapterError(f"{path} is saved quantized: an adapter cannot be merged into its weights; "
                                   "merge it into the full-precision checkpoint (coglens merge-adapter)")
            loaded = apply_adapter(loaded, adapter)
        bank = None
        if adapters:
            from .modeling.adapters import AdapterBank

            bank = AdapterBank(loaded, adapters)
        tok = load_tokenizer(path, tokenizer, config=loaded.config)
        return cls(loaded, tok, Engine(loaded, tok, max_batch_size=max_batch_size, adapters=bank,
                                            compile=compile), path)

    @property
    def config(self):
        return self.model.config

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def build_inputs(
        self,
        query: str,
        *,
        images: Sequence[Any] | None = None,
        history: Sequence[Sequence[Any]] | None = None,
        template: str | None = None,
        allow_multiple_images: bool = False,
    ) -> dict[str, Any]:
        from .processing.conversation import build_conversation_input_ids

        return build_conversation_input_ids(
            self.tokenizer, config=self.config, query=query, history=history, images=images,
            template_version=template, allow_multiple_images=allow_multiple_images,
        )

    def request(self, query: str, *, params: SamplingParams | None = None, request_id: str | None = None,
                adapter: str | None = None, **input_options: Any) -> GenerationRequest:
        """An engine request for ``query``; ``adapter``: one of the adapters loaded with ``adapters=`` (by name)."""
        inputs = self.build_inputs(query, **input_options)
        extra = {"request_id": request_id} if request_id else {}
        return GenerationRequest(inputs["input_ids"], inputs["token_type_ids"], list(inputs["images"] or []),
                                 params or SamplingParams(), adapter=adapter, **extra)

    def stream(self, query: str, *, params: SamplingParams | None = None, adapter: str | None = None,
               **input_options: Any) -> Iterator[TokenEvent]:
        return self.engine.stream(self.request(query, params=params, adapter=adapter, **input_options))

    def ask(self, query: str, *, params: SamplingParams | None = None, adapter: str | None = None,
            **input_options: Any) -> GenerationResult:
        return self.engine.generate([self.request(query, params=params, adapter=adapter, **input_options)])[0]


def _check_adapter(adapter: str | Path, quantize: str | None) -> Path:
    """The adapter folder, checked before the model loads."""
    from .modeling.adapters import AdapterError, check_adapter_folder

    if quantize is not None:
        raise AdapterError("an adapter cannot be merged into quantized weights: merge it first "
                           "(coglens merge-adapter BASE ADAPTER OUT), then load OUT with quantize")
    return check_adapter_folder(adapter)


def _quantization_kwargs(scheme: str | None, vision: bool, device: torch.device | None) -> dict[str, Any]:
    """``from_pretrained``'s ``quantization_config=`` for `scheme` on `device` (None: where a device map puts it),
    or nothing. The loader refuses it for a checkpoint saved quantized, naming the folder."""
    if scheme is None:
        if vision:
            raise ValueError("quantize_vision (--quantize-vision) needs a quantize scheme (--quantize)")
        return {}
    from .modeling.quantization import quantization_config

    return {"quantization_config": quantization_config(scheme, device=device, quantize_vision=vision)}


__all__ = ["DEFAULT_TINY_MODEL", "DEFAULT_TINY_VARIANT", "Pipeline", "pick_device", "resolve_model_path"]
