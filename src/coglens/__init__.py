"""CogLens: run, serve and look inside the CogVLM family of vision-language models."""

from .modeling import (
    Cogvlm2Config,
    Cogvlm2VideoConfig,
    CogvlmConfig,
    CogvlmForCausalLM,
    CogvlmModel,
    CogvlmVisionConfig,
    register_auto_classes,
)

__version__ = "0.1.0"

register_auto_classes()

__all__ = [
    "Cogvlm2Config", "Cogvlm2VideoConfig", "CogvlmConfig", "CogvlmForCausalLM", "CogvlmModel",
    "CogvlmVisionConfig", "__version__",
]
