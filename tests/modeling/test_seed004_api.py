"""The API of Hugging Face's own CogVLM port (seed 004's class names) as its users write it: configs built from
keywords with transformers' usual names, the image span anywhere in the row, an arbitrary attention mask,
``pixel_values``, labels, and the processor from the top-level package."""

from __future__ import annotations

import torch

from coglens import (
    CogvlmConfig,
    CogvlmForCausalLM,
    CogvlmImageProcessor,
    CogvlmModel,
    CogvlmProcessor,
    CogvlmVisionConfig,
)

BATCH, TEXT, IMAGE, PATCH = 2, 7, 32, 2


def _config() -> CogvlmConfig:
    vision = CogvlmVisionConfig(image_size=IMAGE, patch_size=PATCH, num_channels=3, hidden_size=32,
                                num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    assert (vision.num_heads, vision.in_channels) == (4, 3)  # transformers' names map onto THUDM's
    return CogvlmConfig(vision_config=vision.to_dict(), num_hidden_layers=2, num_attention_heads=4, hidden_size=32,
                        intermediate_size=37, max_position_embeddings=512, vocab_size=99)


def test_keyword_configs_and_a_trailing_image_span():
    config = _config()
    assert config.vision_config.num_heads == 4
    span = (IMAGE // PATCH) ** 2 + 2  # patches + boi + eoi
    assert config.num_image_tokens == span
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 99, (BATCH, TEXT + span), generator=g)
    types = torch.cat([torch.zeros(BATCH, TEXT, dtype=torch.long), torch.ones(BATCH, span, dtype=torch.long)], 1)
    mask = torch.randint(0, 2, (BATCH, TEXT + span), generator=g)
    mask[:, -1] = 1
    pixels = torch.randn(BATCH, 3, IMAGE, IMAGE, generator=g)
    torch.manual_seed(0)
    lm = CogvlmForCausalLM(config).eval()
    with torch.no_grad():
        out = lm(pixel_values=pixels, input_ids=ids, attention_mask=mask, token_type_ids=types)
        base = CogvlmModel(config).eval()(pixel_values=pixels, input_ids=ids, attention_mask=mask,
                                          token_type_ids=types)
    assert out.logits.shape == (BATCH, TEXT + span, 99)
    assert base.last_hidden_state.shape == (BATCH, TEXT + span, 32)
    assert torch.isfinite(out.logits[mask.bool()]).all()
    labels = torch.zeros(BATCH, TEXT + span, dtype=torch.long)
    loss = lm(pixel_values=pixels, input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 99), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(loss.detach(), expected)


def test_processor_classes_from_the_top_level_package():
    assert CogvlmProcessor.__module__.startswith("coglens.processing")
    pixels = CogvlmImageProcessor(image_size=IMAGE)(images=[torch.zeros(3, 40, 50, dtype=torch.uint8)])
    assert pixels["pixel_values"].shape == (1, 3, IMAGE, IMAGE)
