"""The model behaves as a transformers user expects (transformers' Llama and LLaVA are the reference):
pixel_values, get_image_features, output_attentions / output_hidden_states / return_dict, eager vs SDPA with
images, loading info, state_dict=, base-model prefix both ways, meta device + to_empty, dtype="auto", hub ids.
"""

from __future__ import annotations

import json

import pytest
import torch
from hf_cache import hf_cache_layout
from testkit import load_goldens, parity_folder

from coglens import CogvlmForCausalLM, CogvlmModel
from coglens.hub import HubError

TOL = {"atol": 1e-4, "rtol": 1e-4}


@pytest.fixture(scope="module")
def cogvlm2():
    folder = parity_folder("cogvlm2")
    return folder, CogvlmForCausalLM.from_pretrained(folder), load_goldens("cogvlm2")


def _batch(g):
    return {"input_ids": g["batch_left_pad/input_ids"], "token_type_ids": g["batch_left_pad/token_type_ids"],
            "attention_mask": g["batch_left_pad/attention_mask"]}


@torch.no_grad()
def test_pixel_values_is_the_batched_image_input(cogvlm2):
    _, model, g = cogvlm2
    pixels = g["batch_left_pad/images"]
    out = model(**_batch(g), pixel_values=pixels)
    mask = g["batch_left_pad/attention_mask"].bool()
    torch.testing.assert_close(out.logits[mask], g["batch_left_pad/logits"][mask], **TOL)
    with pytest.raises(ValueError, match="not both"):
        model(**_batch(g), pixel_values=pixels, images=[[p] for p in pixels])


@torch.no_grad()
def test_get_image_features_and_image_hidden_states(cogvlm2):
    _, model, g = cogvlm2
    pixels = g["batch_left_pad/images"]
    image = model.get_image_features(pixels, output_hidden_states=True, output_attentions=True)
    features = image.pooler_output  # transformers 5's convention: the projected features are the pooler output
    assert features.shape == (2, model.config.num_image_tokens, model.config.hidden_size)
    vision = model.config.vision_config
    assert image.last_hidden_state.shape == (2, vision.grid_size**2 + 1, vision.hidden_size)
    assert len(image.hidden_states) == vision.num_hidden_layers + 1
    assert len(image.attentions) == vision.num_hidden_layers
    torch.testing.assert_close(image.hidden_states[-1], image.last_hidden_state)
    # the tower's own forward (what lens hooks on model.vision see) gives the same features
    torch.testing.assert_close(model.model.vision(pixels), features)
    assert isinstance(model.get_image_features(pixels, return_dict=False), tuple)
    out = model(**_batch(g), pixel_values=pixels)
    torch.testing.assert_close(out.image_hidden_states, features.flatten(0, 1))
    # the image features are exactly what sits at the vision-typed positions of layer 0's input
    hidden = model(**_batch(g), pixel_values=pixels, output_hidden_states=True).hidden_states[0]
    vision = g["batch_left_pad/token_type_ids"] == 1
    torch.testing.assert_close(hidden[vision], features.flatten(0, 1))


@torch.no_grad()
def test_hidden_states_attentions_and_tuples(cogvlm2):
    _, model, g = cogvlm2
    n_layers = model.config.num_hidden_layers
    out = model(**_batch(g), pixel_values=g["batch_left_pad/images"], output_hidden_states=True,
                output_attentions=True)
    assert len(out.hidden_states) == n_layers + 1 and len(out.attentions) == n_layers
    b, length = g["batch_left_pad/input_ids"].shape
    assert out.attentions[0].shape == (b, model.config.num_attention_heads, length, length)
    rows = out.attentions[0].sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows))  # softmax rows
    real_queries = g["batch_left_pad/attention_mask"].bool()  # pad query rows are don't-care, as in the original
    assert out.attentions[0].triu(1).transpose(1, 2)[real_queries].abs().max() == 0  # causal
    tup = model(**_batch(g), pixel_values=g["batch_left_pad/images"], return_dict=False)
    assert isinstance(tup, tuple)
    torch.testing.assert_close(tup[0], out.logits)
    model.config.output_hidden_states = True  # the config default, as in transformers
    try:
        assert len(model(**_batch(g), pixel_values=g["batch_left_pad/images"]).hidden_states) == n_layers + 1
    finally:
        model.config.output_hidden_states = False


@pytest.mark.parametrize("name", ["cogvlm", "cogvlm2", "cogvlm2-video"])
@torch.no_grad()
def test_eager_is_the_reference_sdpa_is_tested_against_with_images(name):
    folder = parity_folder(name)
    eager = CogvlmForCausalLM.from_pretrained(folder, attn_implementation="eager")
    sdpa = CogvlmForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    assert eager.config._attn_implementation == "eager"
    assert eager.config.vision_config._attn_implementation == "eager"
    assert sdpa.config.vision_config._attn_implementation == "sdpa"
    # the vision tower reads the sub-config: watch its attention run the eager path
    calls = []
    import coglens.modeling.attention as attention

    real = attention.eager_attention
    attention.ATTENTION_FUNCTIONS["eager"] = lambda *a, **k: calls.append(a[0].shape) or real(*a, **k)
    try:
        size = eager.config.vision_config.image_size
        pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        n = eager.config.num_image_tokens
        ids = torch.tensor([[1] + [0] * n + [5, 6, 7]] * 2)
        types = torch.tensor([[0] + [1] * n + [0, 0, 0]] * 2)
        mask = torch.ones_like(ids)
        mask[1, :1] = 0
        ref = eager(input_ids=ids, token_type_ids=types, attention_mask=mask, pixel_values=pixels)
    finally:
        attention.ATTENTION_FUNCTIONS["eager"] = real
    assert len(calls) == eager.config.vision_config.num_hidden_layers + eager.config.num_hidden_layers
    fast = sdpa(input_ids=ids, token_type_ids=types, attention_mask=mask, pixel_values=pixels)
    torch.testing.assert_close(fast.logits, ref.logits, **TOL)
    with pytest.raises(ValueError, match="attn_implementation"):
        CogvlmForCausalLM.from_pretrained(folder, attn_implementation="flash_attention_9")


def test_state_dict_and_config_without_a_folder(cogvlm2):
    folder, model, g = cogvlm2
    again, info = CogvlmForCausalLM.from_pretrained(None, config=model.config, state_dict=model.state_dict(),
                                                    output_loading_info=True)
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    with torch.no_grad():
        torch.testing.assert_close(again(**_batch(g), pixel_values=g["batch_left_pad/images"]).logits,
                                   model(**_batch(g), pixel_values=g["batch_left_pad/images"]).logits)


def test_base_model_checkpoint_loads_into_the_head_model_and_back(cogvlm2, tmp_path):
    folder, model, g = cogvlm2
    base, info = CogvlmModel.from_pretrained(folder, output_loading_info=True)
    assert info["unexpected_keys"] == {"lm_head.weight"} and info["missing_keys"] == set()
    assert torch.equal(base.embed_tokens.weight, model.model.embed_tokens.weight)
    base.save_pretrained(tmp_path / "base")
    head, info = CogvlmForCausalLM.from_pretrained(tmp_path / "base", output_loading_info=True)
    assert info["missing_keys"] == {"lm_head.weight"} and info["unexpected_keys"] == set()
    assert torch.equal(head.model.layers[1].mlp.vision_mlp.up_proj.weight,
                       model.model.layers[1].mlp.vision_mlp.up_proj.weight)


def test_meta_device_model_can_be_to_empty_and_initialised(cogvlm2):
    _, model, _ = cogvlm2
    with torch.device("meta"):
        meta = CogvlmForCausalLM(model.config)
    assert meta.lm_head.weight.is_meta
    meta.to_empty(device="cpu")
    meta.init_weights()
    rotary = meta.model.layers[0].self_attn.rotary_emb
    torch.testing.assert_close(rotary.inv_freq, rotary.compute_inv_freq())
    assert torch.isfinite(meta.lm_head.weight).all()


def test_dtype_auto_takes_the_checkpoints_dtype(cogvlm2, tmp_path):
    folder, _, _ = cogvlm2
    CogvlmForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    config = json.loads((tmp_path / "bf16/config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert CogvlmForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto").dtype == torch.bfloat16
    assert CogvlmForCausalLM.from_pretrained(tmp_path / "bf16", torch_dtype="auto").dtype == torch.bfloat16
    # a config that does not say: the weights tell
    config.pop("dtype", None), config.pop("torch_dtype", None)
    (tmp_path / "bf16/config.json").write_text(json.dumps(config))
    assert CogvlmForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto").dtype == torch.bfloat16
    assert CogvlmForCausalLM.from_pretrained(folder, dtype="auto").dtype == torch.float32


def test_hub_ids_resolve_offline_from_the_hf_cache(cogvlm2, tmp_path, monkeypatch):
    folder, model, g = cogvlm2
    cache = tmp_path / "hub"
    hf_cache_layout(cache, "THUDM/cogvlm2-llama3-chat-19B", folder)
    loaded = CogvlmForCausalLM.from_pretrained("THUDM/cogvlm2-llama3-chat-19B", cache_dir=cache,
                                               local_files_only=True)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    loaded = CogvlmForCausalLM.from_pretrained("THUDM/cogvlm2-llama3-chat-19B", revision="main")
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    with pytest.raises(HubError, match="THUDM/not-cached.*HF_HUB_OFFLINE=1"):
        CogvlmForCausalLM.from_pretrained("THUDM/not-cached")
    with pytest.raises(HubError, match="revision 'v9'"):
        CogvlmForCausalLM.from_pretrained("THUDM/cogvlm2-llama3-chat-19B", revision="v9")


def test_keywords_that_would_change_what_is_loaded_are_refused_not_ignored(cogvlm2):
    folder, _, _ = cogvlm2
    with pytest.raises(NotImplementedError, match="variant="):
        CogvlmForCausalLM.from_pretrained(folder, variant="fp16")
    with pytest.raises(TypeError, match="torch_dtpye"):
        CogvlmForCausalLM.from_pretrained(folder, torch_dtpye=torch.float16)
    with pytest.raises(ValueError, match="num_attention_heads"):  # overrides are validated like config.json
        CogvlmForCausalLM.from_pretrained(folder, num_attention_heads=5)
    # the remote-code era keywords of the model cards still load
    assert CogvlmForCausalLM.from_pretrained(folder, trust_remote_code=True, low_cpu_mem_usage=True) is not None


@torch.no_grad()
def test_attn_implementation_per_sub_config(cogvlm2):
    folder, model, g = cogvlm2
    mixed = CogvlmForCausalLM.from_pretrained(folder, attn_implementation={"": "sdpa", "vision_config": "eager"})
    assert mixed.config._attn_implementation == "sdpa"
    assert mixed.config.vision_config._attn_implementation == "eager"
    torch.testing.assert_close(mixed(**_batch(g), pixel_values=g["batch_left_pad/images"]).logits,
                               model(**_batch(g), pixel_values=g["batch_left_pad/images"]).logits, **TOL)


def test_every_variant_is_known_to_the_auto_classes(tmp_path):
    from transformers import AutoModel, AutoModelForImageTextToText

    from coglens import Cogvlm2Config, Cogvlm2VideoConfig, CogvlmConfig

    for config_cls in (CogvlmConfig, Cogvlm2Config, Cogvlm2VideoConfig):
        config = config_cls(vocab_size=64, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                            num_attention_heads=4, vision_config={"image_size": 28, "patch_size": 14,
                                                                  "hidden_size": 16, "num_heads": 2,
                                                                  "num_hidden_layers": 1, "intermediate_size": 20})
        base = AutoModel.from_config(config)
        assert isinstance(base, CogvlmModel) and base.config_class is config_cls
        assert isinstance(AutoModelForImageTextToText.from_config(config), CogvlmForCausalLM)
