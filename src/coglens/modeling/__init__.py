"""Native CogVLM modeling: configuration, vision tower, decoder with visual experts, checkpoint loading.

The names below load on first use (PEP 562): ``coglens.modeling.dtypes`` stays light to import.
"""

from coglens._lazy import lazy_exports

__getattr__, __dir__, _lazy_names = lazy_exports(__name__, {
    ".configuration_cogvlm": ("ConfigError", "Cogvlm2Config", "Cogvlm2VideoConfig", "CogvlmConfig",
                              "CogvlmVisionConfig", "load_config"),
    ".loading": ("CheckpointError",),
    ".quantization": ("QuantizationError", "quantization_config"),
    ".modeling_cogvlm": ("Cogvlm2ForCausalLM", "Cogvlm2Model", "Cogvlm2VideoForCausalLM", "Cogvlm2VideoModel",
                         "CogvlmForCausalLM", "CogvlmModel",
                         "CogvlmPreTrainedModel", "ModelInputError"),
    ".routing": ("build_position_ids", "vision_expert_mask"),
})
__all__ = [*_lazy_names, "register_auto_classes"]


def register_auto_classes() -> None:
    """Make transformers' Auto classes resolve our model types without trust_remote_code."""
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
    )

    from coglens.processing.image_processor import CogvlmImageProcessor
    from coglens.processing.processor import CogvlmProcessor

    from .configuration_cogvlm import Cogvlm2Config, Cogvlm2VideoConfig, CogvlmConfig
    from .modeling_cogvlm import (
        Cogvlm2ForCausalLM,
        Cogvlm2Model,
        Cogvlm2VideoForCausalLM,
        Cogvlm2VideoModel,
        CogvlmForCausalLM,
        CogvlmModel,
    )

    for config_cls, base_cls, lm_cls in (
        (CogvlmConfig, CogvlmModel, CogvlmForCausalLM),
        (Cogvlm2Config, Cogvlm2Model, Cogvlm2ForCausalLM),
        (Cogvlm2VideoConfig, Cogvlm2VideoModel, Cogvlm2VideoForCausalLM),
    ):
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, lm_cls, exist_ok=True)
        AutoModelForImageTextToText.register(config_cls, lm_cls, exist_ok=True)  # transformers 5's VLM auto class
        AutoModel.register(config_cls, base_cls, exist_ok=True)
        # one class serves both backends: it does its own (PIL) resize, bit-exact with the original pipeline
        AutoImageProcessor.register(
            config_cls, image_processor_classes={"pil": CogvlmImageProcessor, "torchvision": CogvlmImageProcessor},
            exist_ok=True,
        )
        AutoProcessor.register(config_cls, CogvlmProcessor, exist_ok=True)
