"""Tiny configs and inputs of the three CogVLM variants, in the shape transformers' model testers give them.

Used by ``test_hf_model_common.py`` (transformers' ``ModelTesterMixin``) and ``test_hf_generation_checks.py``.
"""

from __future__ import annotations

from typing import Any

import torch

from coglens.modeling import (
    Cogvlm2Config,
    Cogvlm2ForCausalLM,
    Cogvlm2VideoConfig,
    Cogvlm2VideoForCausalLM,
    CogvlmConfig,
    CogvlmForCausalLM,
)

# variant -> (config class, causal-LM class); CogvlmModel is the base model of all three
VARIANTS: dict[str, tuple[type[CogvlmConfig], type[CogvlmForCausalLM]]] = {
    "cogvlm": (CogvlmConfig, CogvlmForCausalLM),  # MHA, vision experts, no conv
    "cogvlm2": (Cogvlm2Config, Cogvlm2ForCausalLM),  # GQA (num_multi_query_heads), vision experts, 2x2 conv
    "cogvlm2_video": (Cogvlm2VideoConfig, Cogvlm2VideoForCausalLM),  # GQA, 2x2 conv, no vision experts
}


class CogvlmModelTester:
    """``batch_size`` rows of ``text_length`` text tokens around one image: bos, the image span, then text.

    The attributes are the ones transformers' ``ModelTesterMixin`` reads (``batch_size``, ``seq_length``,
    ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``, ``vision_config``, ``is_training``...).
    """

    def __init__(self, parent: Any, variant: str, batch_size: int = 2, text_length: int = 7) -> None:
        self.parent = parent
        self.variant = variant
        self.config_class = VARIANTS[variant][0]
        self.batch_size = batch_size
        self.text_length = text_length
        self.is_training = True
        self.vocab_size = 99
        self.hidden_size = 32
        self.intermediate_size = 37
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.num_multi_query_heads = 2 if variant != "cogvlm" else None
        self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2
        # CogVLM-1: 28 px / 14 -> 2x2 patches -> 4 + boi + eoi = 6 image tokens; CogVLM2: 56 px -> 4x4 -> conv 2x2 -> 6
        self.image_size = 28 if variant == "cogvlm" else 56
        self.patch_size = 14
        self.vision_config = {
            "image_size": self.image_size, "patch_size": self.patch_size, "hidden_size": 32, "intermediate_size": 37,
            "num_heads": 4, "num_hidden_layers": 2,
        }
        self.num_image_tokens = self.get_config().num_image_tokens
        self.image_start = 1  # after bos
        self.seq_length = self.text_length + self.num_image_tokens

    def get_config(self) -> CogvlmConfig:
        return self.config_class(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
            num_multi_query_heads=self.num_multi_query_heads, max_position_embeddings=64,
            vision_config=dict(self.vision_config), variant=self.variant, pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id,
        )

    def prepare_config_and_inputs_for_common(self) -> tuple[CogvlmConfig, dict[str, torch.Tensor]]:
        """``input_ids``, ``token_type_ids`` (1 on the image span), ``attention_mask`` and ``pixel_values``
        (one image per row: the batched form, which transformers' tests can slice and repeat)."""
        config = self.get_config()
        input_ids = torch.randint(3, self.vocab_size, (self.batch_size, self.seq_length))  # no pad/bos/eos
        input_ids[:, 0] = self.bos_token_id
        token_type_ids = torch.zeros_like(input_ids)
        image = slice(self.image_start, self.image_start + self.num_image_tokens)
        token_type_ids[:, image] = 1
        input_ids[:, image] = config.image_token_id  # placeholders: the model puts the image features there
        inputs = {
            "input_ids": input_ids,
            "token_type_ids": token_type_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values": torch.randn(self.batch_size, 3, self.image_size, self.image_size),
        }
        return config, inputs
