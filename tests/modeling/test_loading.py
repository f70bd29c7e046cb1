"""Loading THUDM folders: every file layout, dtypes, device maps with offload, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from testkit import copy_checkpoint, load_goldens, parity_folder
from transformers import AutoConfig, AutoModelForCausalLM

import coglens  # noqa: F401  (registers the Auto classes)
from coglens import Cogvlm2Config, CogvlmConfig, CogvlmForCausalLM
from coglens.modeling import CheckpointError, ConfigError, load_config

TOL = {"atol": 1e-4, "rtol": 1e-4}


def _single_logits(model, g):
    with torch.no_grad():
        return model(input_ids=g["single/input_ids"], images=[[g["single/images"][0]]],
                     token_type_ids=g["single/token_type_ids"], attention_mask=g["single/attention_mask"]).logits


@pytest.fixture(scope="module")
def cogvlm2():
    return parity_folder("cogvlm2"), load_goldens("cogvlm2")


def _copy_config(src, dst, change=None):
    """Only the configs of the checkpoint ``src``, in ``dst`` (``change`` edits config.json)."""
    copy_checkpoint(src, dst, files=("config.json", "generation_config.json"), config=change)


@pytest.mark.parametrize("sharded", [False, True])
def test_legacy_bin_checkpoints_load_weights_only(cogvlm2, tmp_path, sharded):
    folder, g = cogvlm2
    state = load_file(folder / "model.safetensors")
    _copy_config(folder, tmp_path)
    if sharded:
        keys = sorted(state)
        parts = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
                 "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
        for name, part in parts.items():
            torch.save({k: state[k] for k in part}, tmp_path / name)
        index = {"weight_map": {k: name for name, part in parts.items() for k in part}}
        (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    else:
        torch.save(state, tmp_path / "pytorch_model.bin")
    model = CogvlmForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(_single_logits(model, g), g["single/logits"], **TOL)


def test_bin_with_code_is_refused(cogvlm2, tmp_path):
    folder, _ = cogvlm2
    _copy_config(folder, tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights-only"):
        CogvlmForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_dtypes(cogvlm2, dtype):
    folder, g = cogvlm2
    model = CogvlmForCausalLM.from_pretrained(folder, torch_dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {dtype}
    # the rotary table stays float32 whatever the model dtype (see RotaryEmbedding)
    assert model.model.layers[0].self_attn.rotary_emb.inv_freq.dtype == torch.float32
    logits = _single_logits(model, g)
    assert logits.dtype == torch.float32
    assert (logits - g["single/logits"]).abs().max() < 0.5  # same model, half-precision rounding only


def test_stored_inv_freq_is_used(cogvlm2):
    folder, _ = cogvlm2
    stored = load_file(folder / "model.safetensors")["model.layers.0.self_attn.rotary_emb.inv_freq"]
    model = CogvlmForCausalLM.from_pretrained(folder, torch_dtype=torch.bfloat16)
    assert torch.equal(model.model.layers[0].self_attn.rotary_emb.inv_freq, stored)


def test_device_map_auto_with_cpu_and_disk_offload(cogvlm2, tmp_path):
    folder, g = cogvlm2
    model = CogvlmForCausalLM.from_pretrained(folder, device_map="auto", max_memory={"cpu": "600KB"},
                                              offload_folder=tmp_path / "offload")
    placement = model.hf_device_map
    assert "disk" in placement.values() and "cpu" in placement.values()
    # no decoder or vision layer is ever split across devices
    for name in placement:
        assert not any(name.startswith(p) and name != p.rstrip(".")
                       for p in [f"model.layers.{i}." for i in range(2)] + ["model.vision.transformer.layers.0."])
    torch.testing.assert_close(_single_logits(model, g), g["single/logits"], **TOL)
    out = model.generate(input_ids=g["single/input_ids"], images=[[g["single/images"][0]]],
                         token_type_ids=g["single/token_type_ids"], attention_mask=g["single/attention_mask"],
                         max_new_tokens=10, do_sample=False, eos_token_id=3)
    assert torch.equal(out, g["greedy_single/sequences"])


def test_explicit_device_map_dict(cogvlm2, tmp_path):
    folder, g = cogvlm2
    placement = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                 "model.norm": "cpu", "model.vision": "disk", "lm_head": "cpu"}
    model = CogvlmForCausalLM.from_pretrained(folder, device_map=placement, offload_folder=tmp_path)
    torch.testing.assert_close(_single_logits(model, g), g["single/logits"], **TOL)


def test_auto_classes_and_save_pretrained_round_trip(cogvlm2, tmp_path):
    folder, g = cogvlm2
    model = CogvlmForCausalLM.from_pretrained(folder)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "cogvlm2" and "auto_map" not in saved
    assert isinstance(AutoConfig.from_pretrained(tmp_path), Cogvlm2Config)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(again, CogvlmForCausalLM)
    torch.testing.assert_close(_single_logits(again, g), g["single/logits"], **TOL)


def test_thudm_config_has_no_model_type_and_auto_map_is_ignored():
    raw = json.loads((parity_folder("cogvlm") / "config.json").read_text())
    assert "model_type" not in raw and "auto_map" in raw
    config = load_config(parity_folder("cogvlm"))
    assert type(config) is CogvlmConfig and config.variant == "cogvlm" and config.rope_theta == 10000
    assert not hasattr(config, "auto_map")
    assert load_config(parity_folder("cogvlm2")).variant == "cogvlm2"
    video = load_config(parity_folder("cogvlm2-video"))
    assert video.variant == "cogvlm2_video" and not video.has_vision_experts and video.rope_theta == 500000


def test_video_variant_told_apart_by_weights(tmp_path):
    """A video folder whose config.json does not say so is recognised from its missing experts."""
    copy_checkpoint(parity_folder("cogvlm2-video"), tmp_path / "v",
                    config=lambda cfg: cfg.update(architectures=["CogVLMForCausalLM"]))
    assert load_config(tmp_path / "v").variant == "cogvlm2"
    model = CogvlmForCausalLM.from_pretrained(tmp_path / "v")
    assert model.config.variant == "cogvlm2_video" and not model.config.has_vision_experts


@pytest.mark.parametrize("field,value,needle", [
    ("num_attention_heads", 5, "num_attention_heads"),
    ("num_multi_query_heads", 3, "num_multi_query_heads"),
])
def test_inconsistent_lm_config_names_the_field(tmp_path, field, value, needle):
    copy_checkpoint(parity_folder("cogvlm2"), tmp_path, files=["config.json"],
                    config=lambda cfg: cfg.update({field: value}))
    with pytest.raises(ConfigError, match=needle):
        load_config(tmp_path)


@pytest.mark.parametrize("field,value,needle", [
    ("image_size", 50, "vision_config.image_size"),
    ("num_positions", 20, "vision_config.num_positions"),
    ("num_heads", 3, "vision_config.num_heads"),
])
def test_inconsistent_vision_config_names_the_field(tmp_path, field, value, needle):
    copy_checkpoint(parity_folder("cogvlm2"), tmp_path, files=["config.json"],
                    config=lambda cfg: cfg["vision_config"].update({field: value}))
    with pytest.raises(ConfigError, match=needle):
        load_config(tmp_path)


def test_missing_shard_names_the_file(tmp_path):
    copy_checkpoint(parity_folder("cogvlm2", "-sharded"), tmp_path / "c")
    (tmp_path / "c/model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        CogvlmForCausalLM.from_pretrained(tmp_path / "c")


def test_shape_mismatch_names_file_key_and_both_shapes(tmp_path):
    _copy_config(parity_folder("cogvlm2"), tmp_path)
    state = load_file(parity_folder("cogvlm2") / "model.safetensors")
    state["model.norm.weight"] = torch.ones(32)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        CogvlmForCausalLM.from_pretrained(tmp_path)
    assert all(s in str(err.value) for s in ("model.safetensors", "model.norm.weight", "(32,)", "(64,)"))


def test_unexpected_and_missing_keys_are_reported_as_transformers_does(tmp_path, caplog):
    """Unexpected keys are skipped, missing ones initialised; both are named in a warning and the loading info."""
    _copy_config(parity_folder("cogvlm2"), tmp_path)
    state = load_file(parity_folder("cogvlm2") / "model.safetensors")
    state["model.extra.weight"] = torch.ones(2)
    del state["lm_head.weight"], state["model.layers.0.self_attn.vision_expert_query_key_value.weight"]
    save_file(state, tmp_path / "model.safetensors")
    with caplog.at_level("WARNING"):
        model, info = CogvlmForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["unexpected_keys"] == {"model.extra.weight"}
    assert info["missing_keys"] == {"lm_head.weight", "model.layers.0.self_attn.vision_expert_query_key_value.weight"}
    assert "model.extra.weight" in caplog.text and "lm_head.weight" in caplog.text
    # a missing expert weight is a missing key, not a reason to take the checkpoint for the video variant
    assert model.config.variant == "cogvlm2" and model.config.has_vision_experts
    assert not model.lm_head.weight.is_meta and model.lm_head.weight.std() > 0
    # weights that were loaded are untouched by the initialisation of their neighbours
    bias = "model.layers.0.self_attn.vision_expert_query_key_value.bias"
    assert torch.equal(model.state_dict()[bias], state[bias])


def test_not_a_checkpoint_folder(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        CogvlmForCausalLM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(ConfigError, match="does not describe a CogVLM model"):
        CogvlmForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(OSError, match="neither a local checkpoint folder nor a hub id"):
        CogvlmForCausalLM.from_pretrained(tmp_path / "nope")


LOAD_PROBE = """
import json, sys, torch
from coglens import CogvlmForCausalLM
def status_mb(field):  # VmHWM restarts at exec, unlike ru_maxrss, which a forked child inherits from pytest
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field)) / 1024
CogvlmForCausalLM.from_pretrained(sys.argv[2])  # warm-up: lazy imports are not part of the measurement
before = status_mb('VmRSS')
model = CogvlmForCausalLM.from_pretrained(sys.argv[1])
for p in model.parameters():  # touch every weight: safetensors maps them lazily
    p.data.sum()
print(json.dumps({"before": before, "peak": status_mb('VmHWM')}))
"""

def test_loading_peak_memory_is_about_one_copy(tmp_path):
    """A ~60 MB checkpoint loaded in a fresh process: peak RSS grows by about one copy of the weights."""
    import subprocess
    import sys

    torch.manual_seed(0)
    config = Cogvlm2Config(vocab_size=8000, hidden_size=256, intermediate_size=704, num_hidden_layers=8,
                           num_attention_heads=8, num_multi_query_heads=2,
                           vision_config=dict(image_size=56, patch_size=14, hidden_size=128, intermediate_size=512,
                                              num_heads=4, num_hidden_layers=2))
    model = CogvlmForCausalLM(config)
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    model.save_pretrained(tmp_path, max_shard_size="20MB")
    del model
    out = subprocess.run([sys.executable, "-c", LOAD_PROBE, str(tmp_path), str(parity_folder("cogvlm2"))],
                         capture_output=True, text=True, check=True).stdout
    probe = json.loads(out.strip().splitlines()[-1])
    growth = probe["peak"] - probe["before"]
    assert weights_mb > 40
    assert growth <= 1.2 * weights_mb + 16, f"loading {weights_mb:.0f} MB of weights peaked at +{growth:.0f} MB"
