"""The tiny folders load into coglens' own model and give non-trivial logits (the point of having them)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from coglens.modeling import CogvlmForCausalLM, load_config
from coglens.tiny import TINY_VARIANTS
from coglens.tiny.checkpoint import SHARD_NAMES

# (variant, config.variant, tokens per image: (56/14)^2 + 2 without the 2x2 conv, (56/14/2)^2 + 2 with it)
EXPECTED = [("cogvlm", "cogvlm", 18), ("cogvlm2", "cogvlm2", 6), ("cogvlm2-video", "cogvlm2_video", 6)]


@pytest.mark.parametrize(("variant", "config_variant", "n_image_tokens"), EXPECTED)
def test_config_reads_back(variant, config_variant, n_image_tokens, tiny_dirs):
    config = load_config(tiny_dirs[variant])
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[variant])
    assert config.variant == config_variant
    assert config.num_image_tokens == n_image_tokens
    assert config.has_vision_experts == (variant != "cogvlm2-video")
    assert config.image_token_id == tokenizer.pad_token_id  # vocab < 128002: the pad token marks image slots


@pytest.mark.parametrize("variant", TINY_VARIANTS)
def test_loads_every_tensor_and_runs_a_forward(variant, tiny_dirs):
    folder = tiny_dirs[variant]
    model = CogvlmForCausalLM.from_pretrained(folder).eval()
    state = model.state_dict()
    for shard in SHARD_NAMES:
        for key, tensor in load_file(folder / shard).items():
            if key.endswith("inv_freq") and key not in state:
                continue  # a non-persistent buffer may be recomputed instead of loaded
            assert torch.equal(state[key], tensor), key

    config = model.config
    n = config.num_image_tokens
    input_ids = torch.tensor([[config.bos_token_id] + [config.image_token_id] * n + [300, 301, 302]])
    token_type_ids = torch.tensor([[0] + [1] * n + [0, 0, 0]])
    image = torch.randn(3, 56, 56, generator=torch.Generator().manual_seed(0))
    images = [[image.unsqueeze(0) if variant == "cogvlm2-video" else image]]  # video: one (T, 3, H, W) clip
    with torch.no_grad():
        logits = model(input_ids=input_ids, images=images, token_type_ids=token_type_ids,
                       attention_mask=torch.ones_like(input_ids)).logits
    assert logits.shape == (1, n + 4, config.vocab_size)
    assert torch.isfinite(logits).all()
    assert 1.0 < logits.std().item() < 6.0  # lm_head scaled for logits ~ N(0, 2.5^2), not near-uniform
