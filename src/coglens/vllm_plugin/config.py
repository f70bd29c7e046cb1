"""Config side of the plugin: THUDM's ``config.json`` (no ``model_type``) read by CogLens's config classes.

vLLM reads a checkpoint's config before it loads any model code. THUDM's files name only an architecture and
point ``auto_map`` at remote code, so we tell vLLM which config class each architecture means (the plain
``CogvlmConfig`` infers CogVLM-1, CogVLM2 or CogVLM2-Video from the fields, as CogLens's loader does) and
never run the remote code.

CogVLM's positions are not the token indices (an image's patches share one position), so the model declares
them itself: vLLM asks the model for per-token positions when the config names M-RoPE channels. We use three
channels: the CogVLM position, the position plus the token's vision-expert flag, and the position again. vLLM
continues every channel by the same amount during decoding, so generated tokens always read as language
tokens, which they are.
"""

from __future__ import annotations

from typing import Any, ClassVar

from coglens.modeling.configuration_cogvlm import (
    COGVLM,
    MODEL_TYPES,
    Cogvlm2Config,
    Cogvlm2VideoConfig,
    CogvlmConfig,
)

POSITION_CHANNELS = [1, 1, 1]  # rows of the positions vLLM passes: position, position + expert flag, position


class VllmCogvlmConfig(CogvlmConfig):
    mrope_section: ClassVar[list[int]] = POSITION_CHANNELS

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)


class VllmCogvlm2Config(Cogvlm2Config):
    mrope_section: ClassVar[list[int]] = POSITION_CHANNELS

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)


class VllmCogvlm2VideoConfig(Cogvlm2VideoConfig):
    mrope_section: ClassVar[list[int]] = POSITION_CHANNELS

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)


def register_configs() -> None:
    """Point transformers' AutoConfig (inside vLLM's processes) and vLLM's architecture table at our classes."""
    from transformers import AutoConfig
    from vllm.transformers_utils import config as vllm_config

    from coglens.modeling import register_auto_classes
    from coglens.vllm_plugin import ARCHITECTURES

    register_auto_classes()  # tokenizer, processor and model Auto classes for folders CogLens saved
    for config_cls in (VllmCogvlmConfig, VllmCogvlm2Config, VllmCogvlm2VideoConfig):
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
    table = getattr(vllm_config, "_ARCHITECTURE_TO_MODEL_TYPE", None)
    if not isinstance(table, dict):
        raise RuntimeError(
            "this vLLM version has no table for checkpoints without model_type "
            "(vllm.transformers_utils.config._ARCHITECTURE_TO_MODEL_TYPE); the CogLens plugin is tested with "
            "vLLM 0.32 - install that version"
        )
    for architecture in ARCHITECTURES:
        table[architecture] = MODEL_TYPES[COGVLM]  # CogvlmConfig infers the variant from the fields
