"""What tells the three tiny checkpoints apart, and the small sizes they share.

Light to import (no torch, no tokenizers): the ``coglens`` command reads the variant names from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coglens.tiny.tokenizer import LLAMA3_LAYOUT, VICUNA_LAYOUT, TokenizerLayout


class UnknownTinyVariantError(ValueError):
    """Raised for a variant name that has no tiny checkpoint."""


@dataclass(frozen=True)
class LanguageDims:
    """LM sizes: small enough for a CPU step in milliseconds, large enough for GQA (CogVLM2: 2 query heads per KV
    head) and more than one head.

    Two heads of 32: 32 is the smallest head size vLLM's CPU attention takes (tests/vllm_plugin runs these
    checkpoints there); the weight shapes stay those of the parity fixtures (four heads of 16).
    """

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class VisionDims:
    """EVA2-CLIP sizes: a 4x4 patch grid, so the CogVLM2 2x2 conv leaves 2x2 tokens per image."""

    image_size: int = 56
    patch_size: int = 14
    in_channels: int = 3
    hidden_size: int = 32
    intermediate_size: int = 64
    num_heads: int = 2
    num_hidden_layers: int = 2
    layer_norm_eps: float = 1e-6

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1  # the patch grid plus CLS


@dataclass(frozen=True)
class TinyVariant:
    """The structural rules of one released checkpoint family, as its key names and shapes show them."""

    name: str
    model_type: str  # config.json ``model_type``, so transformers' Auto classes resolve it
    architecture: str  # config.json ``architectures[0]``, as THUDM writes it
    rope_base: float
    num_kv_heads: int | None  # None: multi-head attention, and no ``num_multi_query_heads`` in config.json
    has_vision_conv: bool  # the 2x2 stride-2 ``model.vision.conv`` after the ViT
    has_vision_experts: bool  # ``vision_expert_*`` attention and ``vision_mlp`` weights in every layer
    vision_qkv_bias: bool  # bias on ``vision_expert_query_key_value``
    tokenizer: TokenizerLayout
    language: LanguageDims = field(default_factory=LanguageDims)
    vision: VisionDims = field(default_factory=VisionDims)


_VARIANTS = {
    "cogvlm": TinyVariant(
        name="cogvlm", model_type="cogvlm", architecture="CogVLMForCausalLM", rope_base=10000.0,
        num_kv_heads=None, has_vision_conv=False, has_vision_experts=True, vision_qkv_bias=False,
        tokenizer=VICUNA_LAYOUT,
    ),
    "cogvlm2": TinyVariant(
        name="cogvlm2", model_type="cogvlm2", architecture="CogVLMForCausalLM", rope_base=500000.0,
        num_kv_heads=1, has_vision_conv=True, has_vision_experts=True, vision_qkv_bias=True,
        tokenizer=LLAMA3_LAYOUT,
    ),
    "cogvlm2-video": TinyVariant(
        name="cogvlm2-video", model_type="cogvlm2_llama3_video", architecture="CogVLMVideoForCausalLM",
        rope_base=500000.0, num_kv_heads=1, has_vision_conv=True, has_vision_experts=False,
        vision_qkv_bias=False, tokenizer=LLAMA3_LAYOUT,
    ),
}

TINY_VARIANTS: tuple[str, ...] = tuple(_VARIANTS)
DEFAULT_TINY_VARIANT = "cogvlm2"  # what runs when no model is given
TINY_PREFIX = "tiny:"  # a model named ``tiny:VARIANT`` (``--model tiny:cogvlm2``) is a built-in tiny checkpoint
DEFAULT_TINY_MODEL = TINY_PREFIX + DEFAULT_TINY_VARIANT


def get_tiny_variant(name: str) -> TinyVariant:
    """Look a variant up by the name users type (``coglens tiny cogvlm2 ...``)."""
    try:
        return _VARIANTS[name]
    except KeyError:
        raise UnknownTinyVariantError(
            f"no tiny checkpoint for variant {name!r}; choose one of: {', '.join(TINY_VARIANTS)}"
        ) from None
