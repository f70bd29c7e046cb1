"""LoRA adapters for the tests, saved by peft itself (a module of its own: ``conftest`` names clash across folders)."""

from __future__ import annotations

from pathlib import Path

import torch

# Module names of OUR tree (THUDM's): a language expert, a vision expert, the language MLP and the vision tower,
# so an adapter changes text-only and image answers alike.
TARGETS = ["language_expert_query_key_value", "vision_expert_dense", "language_mlp.down_proj",
           "attention.query_key_value"]


def save_lora(out: Path, *, seed: int = 0, targets: list[str] = TARGETS, variant: str = "cogvlm2") -> Path:
    """A LoRA (r=4) on a fresh tiny CogVLM2 (or another tiny ``variant``), with lora_B drawn at random (peft starts
    it at zero, which would change nothing), saved with peft's ``save_pretrained``."""
    from peft import LoraConfig, get_peft_model

    from coglens.modeling import CogvlmForCausalLM
    from coglens.pipeline import resolve_model_path

    model = CogvlmForCausalLM.from_pretrained(resolve_model_path(f"tiny:{variant}"))
    peft_model = get_peft_model(model, LoraConfig(target_modules=targets, r=4, lora_alpha=8))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    peft_model.save_pretrained(out)
    return out
