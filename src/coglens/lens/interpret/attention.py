"""How much the answer attends to each image patch: the numbers behind ``coglens explain``.

The model's attention runs through SDPA, which returns no weights, so a forward pre-hook on each chosen
layer's attention recomputes them from the same inputs: ``VisionExpertAttention.project`` gives the routed,
rotated q and k, and the hook keeps ``softmax(q k^T / sqrt(d))`` (causal) of the answer's query rows for the
image-patch keys only.

The query rows are those that *produced* the answer tokens: the last prompt position (which wrote the first
answer token) up to the second-to-last answer token, so each generated token is explained by the step that
chose it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from coglens.engine import SamplingParams
from coglens.modeling.routing import VISION_TOKEN_TYPE


class ExplainInputError(ValueError):
    """A layer/head selection or an input that ``coglens explain`` cannot use."""


@dataclass
class ImageAttention:
    """The answer's attention to the image patches, averaged over answer tokens, the heads and the layers."""

    grid: np.ndarray  # (side, side): mean attention probability that one patch receives
    answer: str
    answer_token_ids: list[int]
    layers: list[int]
    heads: list[int]
    per_layer_head: np.ndarray  # (layers, heads, patches) before averaging, ordered as ``layers``, ``heads``

    @property
    def image_share(self) -> float:
        """Fraction of the answer's attention that lands on image patches (the grid's sum)."""
        return float(self.grid.sum())


class PatchAttentionRecorder:
    """Context manager: per chosen layer, the attention probabilities from query rows ``query_start:`` to the
    key columns ``key_columns``, averaged over the query rows -> ``recorded[layer]`` of shape (heads, keys).

    Batch size 1, no cache (one full forward). Hooks are registered in ``__enter__`` and always removed.
    """

    def __init__(
        self, model: Any, layers: Sequence[int], *, query_start: int, key_columns: torch.Tensor
    ) -> None:
        self.attentions = [model.model.layers[i].self_attn for i in layers]
        self.layers = list(layers)
        self.query_start = query_start
        self.key_columns = key_columns
        self.recorded: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> PatchAttentionRecorder:
        self._handles = [
            attention.register_forward_pre_hook(self._hook(layer))
            for layer, attention in zip(self.layers, self.attentions, strict=True)
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in reversed(self._handles):
            handle.remove()
        self._handles = []

    def _hook(self, layer: int):
        def record(module: Any, args: tuple[Any, ...]) -> None:
            hidden_states, vision_mask, position_ids = args[:3]  # as CogvlmDecoderLayer passes them
            q, k, _ = module.project(hidden_states, vision_mask, position_ids)
            k = k.repeat_interleave(module.num_heads // module.num_kv_heads, dim=1)  # GQA: KV head h // rep
            q = q[:, :, self.query_start:].float()
            scores = q @ k.float().transpose(-1, -2) / math.sqrt(module.head_dim)  # (1, H, rows, keys)
            rows = torch.arange(self.query_start, self.query_start + q.shape[2], device=scores.device)
            future = torch.arange(k.shape[2], device=scores.device).view(1, -1) > rows.view(-1, 1)
            probs = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
            picked = probs[0][:, :, self.key_columns.to(probs.device)]  # (H, rows, patches)
            self.recorded[layer] = picked.mean(dim=1).cpu()

        return record


def image_attention(
    pipe: Any,
    image: str | Path | Image.Image,
    question: str,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    template: str | None = None,
    params: SamplingParams | None = None,
) -> ImageAttention:
    """Answer ``question`` about ``image``, then measure how the answer's tokens attended to each patch."""
    from coglens.processing.image import load_image

    config = pipe.config
    if config.is_video:
        raise ExplainInputError("explain works on one image; CogVLM2-Video checkpoints are not supported")
    layers = list(range(config.num_hidden_layers)) if layers is None else list(layers)
    heads = list(range(config.num_attention_heads)) if heads is None else list(heads)
    _check_indices(layers, config.num_hidden_layers, "layer")
    _check_indices(heads, config.num_attention_heads, "head")
    picture = load_image(image)
    result = pipe.ask(question, images=[picture], template=template,
                      params=params or SamplingParams(max_new_tokens=32))
    inputs = pipe.build_inputs(question, images=[picture], template=template)
    prompt_len = int(inputs["input_ids"].numel())
    answer_ids = torch.tensor(result.token_ids[:-1], dtype=torch.long)  # the last token is never read back
    input_ids = torch.cat((inputs["input_ids"], answer_ids)).view(1, -1)
    token_types = torch.cat((inputs["token_type_ids"], torch.zeros_like(answer_ids))).view(1, -1)
    patches = _patch_columns(inputs["token_type_ids"])
    side = math.isqrt(patches.numel())
    if side * side != patches.numel():
        raise ExplainInputError(f"{patches.numel()} image patches do not form a square grid")

    device = pipe.engine.device
    recorder = PatchAttentionRecorder(pipe.model, layers, query_start=prompt_len - 1, key_columns=patches)
    with recorder, torch.inference_mode():
        pipe.model(input_ids=input_ids.to(device), token_type_ids=token_types.to(device),
                   images=[list(inputs["images"])], use_cache=False, logits_to_keep=1)
    per_layer_head = torch.stack([recorder.recorded[layer][heads] for layer in layers]).numpy()
    grid = per_layer_head.mean(axis=(0, 1)).reshape(side, side)
    return ImageAttention(grid, result.text, list(result.token_ids), layers, heads, per_layer_head)


def parse_selection(spec: str, count: int, what: str) -> list[int] | None:
    """``"all"`` -> None (every one); ``"0,2,-1"`` -> [0, 2, count - 1]; out-of-range indices are refused."""
    spec = spec.strip().lower()
    if spec == "all":
        return None
    try:
        indices = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise ExplainInputError(
            f"--{what}s {spec!r}: give 'all' or comma-separated numbers, e.g. 0,1,-1"
        ) from None
    if not indices:
        raise ExplainInputError(f"--{what}s is empty: give 'all' or comma-separated numbers")
    resolved = [index + count if index < 0 else index for index in indices]
    _check_indices(resolved, count, what)
    return resolved


def _check_indices(indices: Sequence[int], count: int, what: str) -> None:
    bad = [index for index in indices if not 0 <= index < count]
    if bad:
        raise ExplainInputError(
            f"{what} {bad[0]} does not exist: the model has {count} {what}s (0-{count - 1})"
        )


def _patch_columns(token_type_ids: torch.Tensor) -> torch.Tensor:
    """Positions of the image's patch tokens: its vision span without the boi and eoi tokens at the ends."""
    vision = (token_type_ids == VISION_TOKEN_TYPE).nonzero().flatten()
    if vision.numel() < 3:
        raise ExplainInputError("the prompt has no image span; explain needs an image")
    return vision[1:-1]
