"""Key names, shapes and random values of a CogVLM state dict, following the released checkpoints' rules.

Values are scaled as the parity fixtures' generator scales them, so activations stay O(1) through every layer
and the logits are far from uniform (std about 2.5): hooks, lenses and greedy decoding see non-trivial numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch

from coglens.tiny.variants import LanguageDims, TinyVariant, VisionDims


class Init(Enum):
    """How a tensor is drawn (N = standard normal)."""

    FAN_IN = "1.2 / sqrt(fan_in) * N"  # linear and conv weights
    LM_HEAD = "2.5 / sqrt(hidden) * N"  # logits ~ N(0, 2.5^2)
    EMBEDDING = "N"
    NORM = "1 + 0.1 * N"
    BIAS = "0.1 * N"
    LEARNED_VECTOR = "0.5 * N"  # boi, eoi, CLS and position embeddings
    INV_FREQ = "1 / base ** (arange(0, head_dim, 2) / head_dim)"  # the stored rotary buffer, not random


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    init: Init


def checkpoint_spec(
    variant: TinyVariant, vocab_size: int, lm: LanguageDims | None = None, vision: VisionDims | None = None
) -> list[TensorSpec]:
    """Every tensor of the variant's checkpoint; sizes default to the variant's tiny ones."""
    lm = lm or variant.language
    vision = vision or variant.vision
    h = lm.hidden_size
    spec = [TensorSpec("model.embed_tokens.weight", (vocab_size, h), Init.EMBEDDING)]
    for i in range(lm.num_hidden_layers):
        spec += _decoder_layer(variant, lm, f"model.layers.{i}")
    spec += [
        TensorSpec("model.norm.weight", (h,), Init.NORM),
        TensorSpec("lm_head.weight", (vocab_size, h), Init.LM_HEAD),
    ]
    return spec + _vision_tower(variant, lm, vision)


def _decoder_layer(variant: TinyVariant, lm: LanguageDims, prefix: str) -> list[TensorSpec]:
    h, inner = lm.hidden_size, lm.intermediate_size
    kv_heads = variant.num_kv_heads or lm.num_attention_heads
    qkv = h + 2 * kv_heads * lm.head_dim  # [all query heads | K heads | V heads]
    experts = ("language", "vision") if variant.has_vision_experts else ("language",)
    spec = [
        TensorSpec(f"{prefix}.input_layernorm.weight", (h,), Init.NORM),
        TensorSpec(f"{prefix}.post_attention_layernorm.weight", (h,), Init.NORM),
        TensorSpec(f"{prefix}.self_attn.rotary_emb.inv_freq", (lm.head_dim // 2,), Init.INV_FREQ),
    ]
    for expert in experts:
        attn = f"{prefix}.self_attn.{expert}_expert"
        spec.append(TensorSpec(f"{attn}_query_key_value.weight", (qkv, h), Init.FAN_IN))
        if expert == "vision" and variant.vision_qkv_bias:
            spec.append(TensorSpec(f"{attn}_query_key_value.bias", (qkv,), Init.BIAS))
        spec.append(TensorSpec(f"{attn}_dense.weight", (h, h), Init.FAN_IN))
        mlp = f"{prefix}.mlp.{expert}_mlp"
        spec += [
            TensorSpec(f"{mlp}.gate_proj.weight", (inner, h), Init.FAN_IN),
            TensorSpec(f"{mlp}.up_proj.weight", (inner, h), Init.FAN_IN),
            TensorSpec(f"{mlp}.down_proj.weight", (h, inner), Init.FAN_IN),
        ]
    return spec


def _vision_tower(variant: TinyVariant, lm: LanguageDims, vision: VisionDims) -> list[TensorSpec]:
    hv, p = vision.hidden_size, vision.patch_size
    spec = [
        TensorSpec("model.vision.patch_embedding.proj.weight", (hv, vision.in_channels, p, p), Init.FAN_IN),
        TensorSpec("model.vision.patch_embedding.proj.bias", (hv,), Init.BIAS),
        TensorSpec("model.vision.patch_embedding.cls_embedding", (1, hv), Init.LEARNED_VECTOR),
        TensorSpec("model.vision.patch_embedding.position_embedding.weight", (vision.num_positions, hv),
                   Init.LEARNED_VECTOR),
    ]
    for i in range(vision.num_hidden_layers):
        layer = f"model.vision.transformer.layers.{i}"
        spec += [
            *_affine_norm(f"{layer}.input_layernorm", hv),
            *_linear(f"{layer}.attention.query_key_value", 3 * hv, hv),
            *_linear(f"{layer}.attention.dense", hv, hv),
            *_affine_norm(f"{layer}.post_attention_layernorm", hv),
            *_linear(f"{layer}.mlp.fc1", vision.intermediate_size, hv),
            *_linear(f"{layer}.mlp.fc2", hv, vision.intermediate_size),
        ]
    if variant.has_vision_conv:
        spec += [
            TensorSpec("model.vision.conv.weight", (hv, hv, 2, 2), Init.FAN_IN),
            TensorSpec("model.vision.conv.bias", (hv,), Init.BIAS),
        ]
    h, inner = lm.hidden_size, lm.intermediate_size
    glu = "model.vision.linear_proj"  # the GLU adapter into the LM's width; no biases except its LayerNorm
    return spec + [
        TensorSpec(f"{glu}.linear_proj.weight", (h, hv), Init.FAN_IN),
        *_affine_norm(f"{glu}.norm1", h),
        TensorSpec(f"{glu}.dense_h_to_4h.weight", (inner, h), Init.FAN_IN),
        TensorSpec(f"{glu}.gate_proj.weight", (inner, h), Init.FAN_IN),
        TensorSpec(f"{glu}.dense_4h_to_h.weight", (h, inner), Init.FAN_IN),
        TensorSpec("model.vision.boi", (1, 1, h), Init.LEARNED_VECTOR),
        TensorSpec("model.vision.eoi", (1, 1, h), Init.LEARNED_VECTOR),
    ]


def _linear(prefix: str, out_features: int, in_features: int) -> list[TensorSpec]:
    return [
        TensorSpec(f"{prefix}.weight", (out_features, in_features), Init.FAN_IN),
        TensorSpec(f"{prefix}.bias", (out_features,), Init.BIAS),
    ]


def _affine_norm(prefix: str, size: int) -> list[TensorSpec]:
    return [TensorSpec(f"{prefix}.weight", (size,), Init.NORM), TensorSpec(f"{prefix}.bias", (size,), Init.BIAS)]


def random_state_dict(
    spec: list[TensorSpec], *, rope_base: float, seed: int, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Draw every tensor in ``spec`` order from one seeded generator (float32, then cast to ``dtype``)."""
    generator = torch.Generator().manual_seed(seed)
    return {s.name: _draw(s, generator, rope_base).to(dtype) for s in spec}


def _draw(spec: TensorSpec, generator: torch.Generator, rope_base: float) -> torch.Tensor:
    if spec.init is Init.INV_FREQ:
        head_dim = 2 * spec.shape[0]  # computed in float32, exactly as the reference rotary module does
        return 1.0 / (rope_base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    fan_in = math.prod(spec.shape[1:])  # for lm_head: the hidden size
    mean, std = {
        Init.FAN_IN: (0.0, 1.2 / math.sqrt(fan_in)),
        Init.LM_HEAD: (0.0, 2.5 / math.sqrt(fan_in)),
        Init.EMBEDDING: (0.0, 1.0),
        Init.NORM: (1.0, 0.1),
        Init.BIAS: (0.0, 0.1),
        Init.LEARNED_VECTOR: (0.0, 0.5),
    }[spec.init]
    return mean + std * torch.randn(spec.shape, generator=generator, dtype=torch.float32)
