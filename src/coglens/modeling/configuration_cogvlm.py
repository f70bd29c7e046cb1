"""Configuration of the CogVLM family, read from THUDM's ``config.json`` as released.

THUDM's files carry no ``model_type`` and point ``auto_map`` at remote code; we ignore ``auto_map`` (it is never
executed) and tell the three variants apart from the fields themselves, then from the weights
(see :func:`coglens.modeling.loading.detect_variant`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig

# The three released families; every other module asks a config (``is_video``...) or uses these names.
COGVLM = "cogvlm"  # CogVLM-1: Vicuna, multi-head attention, no vision conv
COGVLM2 = "cogvlm2"  # Llama-3, grouped-query attention, a 2x2 conv after the ViT
COGVLM2_VIDEO = "cogvlm2_video"  # CogVLM2 without vision experts, taking video frames
VARIANTS = (COGVLM, COGVLM2, COGVLM2_VIDEO)
MODEL_TYPES = {COGVLM: "cogvlm", COGVLM2: "cogvlm2", COGVLM2_VIDEO: "cogvlm2_llama3_video"}
ROPE_THETA = {COGVLM: 10000.0, COGVLM2: 500000.0, COGVLM2_VIDEO: 500000.0}
COGVLM2_IMAGE_SIZE, COGVLM2_VIDEO_IMAGE_SIZE = 1344, 224  # the released checkpoints' vision_config.image_size
LLAMA3_IMAGE_TOKEN_ID = 128002  # CogVLM2 hard-codes Llama-3's reserved id 128002 as the image placeholder
# Sizes a config.json must give as positive integers (a string or 12.5 would fail deep inside transformers)
_POSITIVE_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_multi_query_heads", "max_position_embeddings")
_VISION_POSITIVE_INTS = ("image_size", "patch_size", "in_channels", "num_channels", "hidden_size",
                         "intermediate_size", "num_heads", "num_attention_heads", "num_hidden_layers", "num_positions")
_NULLABLE = ("num_multi_query_heads",)  # null: no grouped-query attention (CogVLM)
_MAX_SIZE = 1 << 24  # above any real model's size: a larger value is a typo that would ask for terabytes
_POSITIVE_FLOATS = ("rms_norm_eps", "rope_theta", "initializer_range")
_VISION_POSITIVE_FLOATS = ("layer_norm_eps",)


class ConfigError(ValueError):
    """A checkpoint config that cannot describe a working model; the message names the field."""


class CogvlmVisionConfig(PretrainedConfig):
    """EVA2-CLIP vision tower settings (the nested ``vision_config`` dict of THUDM's config.json)."""

    model_type = "cogvlm_vision"
    # THUDM's names (num_heads, in_channels) are what config.json stores; transformers' usual names work too
    attribute_map = {"num_attention_heads": "num_heads", "num_channels": "in_channels"}

    def __init__(
        self,
        image_size: int = 490,
        patch_size: int = 14,
        in_channels: int = 3,
        hidden_size: int = 1792,
        intermediate_size: int = 15360,
        num_heads: int = 16,
        num_hidden_layers: int = 63,
        num_positions: int | None = None,
        layer_norm_eps: float = 1e-6,
        hidden_act: str = "gelu",
        dropout_prob: float = 0.0,
        num_attention_heads: int | None = None,
        num_channels: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.image_size = image_size
        self.patch_size = patch_size
        self.in_channels = in_channels if num_channels is None else num_channels
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_heads = num_heads if num_attention_heads is None else num_attention_heads
        self.num_hidden_layers = num_hidden_layers
        self.num_positions = (image_size // patch_size) ** 2 + 1 if num_positions is None else num_positions
        self.layer_norm_eps = layer_norm_eps
        self.hidden_act = hidden_act
        self.dropout_prob = dropout_prob
        super().__init__(**kwargs)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    def validate(self) -> None:
        _require(self.hidden_size % self.num_heads == 0, "vision_config.num_heads",
                 f"vision hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        _require(self.image_size % self.patch_size == 0, "vision_config.image_size",
                 f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        expected = self.grid_size**2 + 1
        _require(self.num_positions == expected, "vision_config.num_positions",
                 f"num_positions is {self.num_positions} but a {self.grid_size}x{self.grid_size} patch grid plus "
                 f"the CLS token needs {expected}")


class CogvlmConfig(PretrainedConfig):
    """Language model + vision settings of a CogVLM checkpoint.

    ``variant`` is ``"cogvlm"`` (CogVLM-1, Vicuna, MHA), ``"cogvlm2"`` (Llama-3, GQA, 2x2 conv) or
    ``"cogvlm2_video"`` (CogVLM2 without vision experts). It is inferred when the file does not say.
    """

    model_type = MODEL_TYPES[COGVLM]
    variant_default = COGVLM
    # a sub-config: attn_implementation and dtype reach the vision tower the way transformers dispatches them
    sub_configs_defaults = {"vision_config": CogvlmVisionConfig}
    if not hasattr(PretrainedConfig, "sub_configs_defaults"):  # older transformers (5.19) reads only this name
        sub_configs = {"vision_config": CogvlmVisionConfig}

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 4096,
        intermediate_size: int = 11008,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_multi_query_heads: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 2048,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-5,
        template_version: str = "chat",
        rope_theta: float | None = None,
        vision_config: dict | CogvlmVisionConfig | None = None,
        variant: str | None = None,
        use_vision_experts: bool | None = None,
        image_token_id: int | None = None,
        pad_token_id: int | None = 0,
        bos_token_id: int | None = 1,
        eos_token_id: int | list[int] | None = 2,
        tie_word_embeddings: bool = False,
        use_cache: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("auto_map", None)  # points at THUDM's remote code, which we never run
        kwargs.pop("model_type", None)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_multi_query_heads = num_multi_query_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.template_version = template_version
        if isinstance(vision_config, CogvlmVisionConfig):
            self.vision_config = vision_config
        else:
            self.vision_config = CogvlmVisionConfig(**(vision_config or {}))
        if variant is None:
            variant = infer_variant(num_multi_query_heads, kwargs.get("architectures"), self.variant_default)
        _require(variant in VARIANTS, "variant", f"unknown variant {variant!r}; expected one of {VARIANTS}")
        self.variant = variant
        self.use_vision_experts = variant != COGVLM2_VIDEO if use_vision_experts is None else use_vision_experts
        self.rope_theta = ROPE_THETA[variant] if rope_theta is None else rope_theta
        self._image_token_id = image_token_id
        self.use_cache = use_cache
        super().__init__(
            pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings, **kwargs,
        )
        self.validate()

    # derived, read-only
    @property
    def num_key_value_heads(self) -> int:
        return self.num_multi_query_heads or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def is_video(self) -> bool:
        """A CogVLM2-Video checkpoint: it takes video clips (frames), not images."""
        return self.variant == COGVLM2_VIDEO

    @property
    def has_vision_conv(self) -> bool:
        return self.variant != COGVLM

    @property
    def has_vision_experts(self) -> bool:
        return self.use_vision_experts

    @property
    def num_image_tokens(self) -> int:
        """Tokens one image (or one video frame) takes in the LM: the patch grid plus boi and eoi."""
        grid = self.vision_config.grid_size // (2 if self.has_vision_conv else 1)
        return grid * grid + 2

    @property
    def image_token_id(self) -> int:
        if self._image_token_id is not None:
            return self._image_token_id
        if self.variant != COGVLM and self.vocab_size > LLAMA3_IMAGE_TOKEN_ID:
            return LLAMA3_IMAGE_TOKEN_ID
        return self.pad_token_id if self.pad_token_id is not None else 0

    def validate(self) -> None:
        _require(self.hidden_size % self.num_attention_heads == 0, "num_attention_heads",
                 f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                 f"{self.num_attention_heads}")
        _require(self.num_attention_heads % self.num_key_value_heads == 0, "num_multi_query_heads",
                 f"num_attention_heads {self.num_attention_heads} is not a multiple of num_multi_query_heads "
                 f"{self.num_key_value_heads}")
        _require(self.head_dim % 2 == 0, "num_attention_heads", f"head dim {self.head_dim} must be even for rotary")
        self.vision_config.validate()
        if self.has_vision_conv:
            _require(self.vision_config.grid_size % 2 == 0, "vision_config.image_size",
                     f"the 2x2 conv needs an even patch grid, got {self.vision_config.grid_size}")
        self.template_version = self.template_version or "chat"

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("_image_token_id", None)
        if self._image_token_id is not None:
            out["image_token_id"] = self._image_token_id
        out["model_type"] = self.model_type
        return out


class Cogvlm2Config(CogvlmConfig):
    model_type = MODEL_TYPES[COGVLM2]
    variant_default = COGVLM2

    def __init__(self, **kwargs: Any) -> None:  # an own __init__ keeps transformers from generating one
        if kwargs.get("vision_config") is None:  # a default that builds: the released size has an even grid
            kwargs["vision_config"] = {"image_size": COGVLM2_IMAGE_SIZE}
        super().__init__(**kwargs)


class Cogvlm2VideoConfig(CogvlmConfig):
    model_type = MODEL_TYPES[COGVLM2_VIDEO]
    variant_default = COGVLM2_VIDEO

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("vision_config") is None:
            kwargs["vision_config"] = {"image_size": COGVLM2_VIDEO_IMAGE_SIZE}
        super().__init__(**kwargs)


CONFIG_CLASSES: dict[str, type[CogvlmConfig]] = {
    COGVLM: CogvlmConfig, COGVLM2: Cogvlm2Config, COGVLM2_VIDEO: Cogvlm2VideoConfig,
}
_MODEL_TYPE_TO_VARIANT = {v: k for k, v in MODEL_TYPES.items()}


def infer_variant(num_multi_query_heads: int | None, architectures: list[str] | None, default: str) -> str:
    """THUDM's configs have no model_type: GQA means the Llama-3 based CogVLM2, a video class name the video model.

    ``default`` is the variant the config class stands for; the plain ``CogvlmConfig`` (default "cogvlm") is the
    one that infers, the CogVLM2 classes keep their own.
    """
    if architectures and any("Video" in a for a in architectures):
        return COGVLM2_VIDEO
    if default != COGVLM:
        return default
    return COGVLM2 if num_multi_query_heads is not None else COGVLM


def load_config(path: str | Path, **overrides: Any) -> CogvlmConfig:
    """Read ``config.json`` of a checkpoint folder (or the file itself) into the right config class."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{path} is not a CogVLM checkpoint: no config.json there")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{file} is not valid JSON ({exc})") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("vision_config"), dict) or "hidden_size" not in raw:
        raise ConfigError(
            f"{file} does not describe a CogVLM model (no vision_config / hidden_size); "
            "point at a THUDM CogVLM, CogVLM2 or CogVLM2-Video checkpoint folder"
        )
    raw.update(overrides)
    _check_sizes(raw, _POSITIVE_INTS, "", file)
    _check_sizes(raw["vision_config"], _VISION_POSITIVE_INTS, "vision_config.", file)
    _check_floats(raw, _POSITIVE_FLOATS, "", file)
    _check_floats(raw["vision_config"], _VISION_POSITIVE_FLOATS, "vision_config.", file)
    variant = raw.get("variant") or _MODEL_TYPE_TO_VARIANT.get(raw.get("model_type", ""))
    if variant is None:
        variant = infer_variant(raw.get("num_multi_query_heads"), raw.get("architectures"), COGVLM)
    raw["variant"] = variant
    return CONFIG_CLASSES[variant](**raw)


def declares_variant(folder: str | Path) -> bool:
    """Whether ``config.json`` says which variant it is (coglens's and transformers' saves do; THUDM's do not)."""
    file = Path(folder) / "config.json"
    raw = json.loads(file.read_text()) if file.is_file() else {}
    return "variant" in raw or raw.get("model_type") in _MODEL_TYPE_TO_VARIANT


def _check_sizes(values: dict[str, Any], names: tuple[str, ...], prefix: str, file: Path) -> None:
    for name in names:
        if name not in values or (values[name] is None and name in _NULLABLE):
            continue
        value = values[name]
        if type(value) is not int or not 0 < value <= _MAX_SIZE:
            raise ConfigError(f"config field `{prefix}{name}` in {file} must be a positive integer (at most "
                              f"{_MAX_SIZE}), got {value!r}")


def _check_floats(values: dict[str, Any], names: tuple[str, ...], prefix: str, file: Path) -> None:
    for name in names:
        value = values.get(name)
        if name in values and (type(value) not in (int, float) or not 0 < value < float("inf")):
            raise ConfigError(f"config field `{prefix}{name}` in {file} must be a positive number, got {value!r}")


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config field `{field}`: {message}")
