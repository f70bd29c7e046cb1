"""The written folders follow the released checkpoints' rules, as the parity fixtures show them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from testkit import parity_folder

from coglens.tiny import TINY_VARIANTS
from coglens.tiny.checkpoint import SHARD_NAMES
from coglens.tiny.variants import LanguageDims, VisionDims, get_tiny_variant
from coglens.tiny.weights import checkpoint_spec


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)


def _written_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for shard in SHARD_NAMES for k, v in load_file(folder / shard).items()}


def _dims_of(config: dict) -> tuple[LanguageDims, VisionDims]:
    vision = config["vision_config"]
    lm = LanguageDims(
        hidden_size=config["hidden_size"], intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"], num_attention_heads=config["num_attention_heads"],
    )
    vd = VisionDims(
        image_size=vision["image_size"], patch_size=vision["patch_size"], hidden_size=vision["hidden_size"],
        intermediate_size=vision["intermediate_size"], num_heads=vision["num_heads"],
        num_hidden_layers=vision["num_hidden_layers"],
    )
    return lm, vd


@pytest.mark.parametrize("variant", TINY_VARIANTS)
def test_spec_for_fixture_dims_matches_fixture_keys_and_shapes(variant):
    folder = parity_folder(variant)
    config = json.loads((folder / "config.json").read_text())
    lm, vision = _dims_of(config)
    as_fixture = dataclasses.replace(get_tiny_variant(variant), num_kv_heads=config.get("num_multi_query_heads"))
    spec = checkpoint_spec(as_fixture, config["vocab_size"], lm, vision)
    assert {s.name: s.shape for s in spec} == _shapes(folder / "model.safetensors")


@pytest.mark.parametrize("variant", TINY_VARIANTS)
def test_written_checkpoint_matches_fixture_but_for_vocab_rows(variant, tiny_dirs):
    """Same keys and shapes as the fixture but for the rotary tables: its four heads of 16 are two heads of 32 here
    (and CogVLM2's two KV heads of 16 one of 32), as vLLM's CPU attention takes head size 32 at least."""
    expected = _shapes(parity_folder(variant) / "model.safetensors")
    vocab = json.loads((tiny_dirs[variant] / "config.json").read_text())["vocab_size"]
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        expected[key] = (vocab, expected[key][1])
    for key in [k for k in expected if k.endswith("rotary_emb.inv_freq")]:
        expected[key] = (LanguageDims().head_dim // 2,)  # one angle per pair of a head's dimensions
    tensors = _written_tensors(tiny_dirs[variant])
    assert {k: tuple(t.shape) for k, t in tensors.items()} == expected
    assert {t.dtype for t in tensors.values()} == {torch.float32}


def _rotary_rule(head_dim: int, base: float) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


@pytest.mark.parametrize("variant", TINY_VARIANTS)
def test_rotary_inv_freq_follows_the_fixture_rule_bit_for_bit(variant, tiny_dirs):
    """The rule, checked bit for bit on the fixture (head size 16), gives the tiny tables (head size 32)."""
    reference = load_file(parity_folder(variant) / "model.safetensors")
    ours = _written_tensors(tiny_dirs[variant])
    base = get_tiny_variant(variant).rope_base
    for layer in range(2):
        key = f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"
        assert torch.equal(reference[key], _rotary_rule(16, base))
        assert torch.equal(ours[key], _rotary_rule(LanguageDims().head_dim, base))


def test_rotary_base_by_hand(tiny_dirs):
    # head dim 32: inv_freq[1] = base ** (-2/32)
    for variant, base in (("cogvlm", 10000.0), ("cogvlm2", 500000.0), ("cogvlm2-video", 500000.0)):
        inv_freq = _written_tensors(tiny_dirs[variant])["model.layers.0.self_attn.rotary_emb.inv_freq"]
        assert inv_freq[0].item() == 1.0
        assert inv_freq[1].item() == pytest.approx(base ** (-2 / 32), rel=1e-6)


@pytest.mark.parametrize("variant", TINY_VARIANTS)
def test_weight_scales_follow_the_fixture_generator(variant, tiny_dirs):
    """Same draw rule as the fixture (different draws): per-tensor mean and std agree within sampling noise, once
    matrices are rescaled for their wider fan-in (the rule draws them with std c/sqrt(fan_in))."""
    reference = load_file(parity_folder(variant) / "model.safetensors")
    ours = _written_tensors(tiny_dirs[variant])
    for key, ref in reference.items():
        if key.endswith("inv_freq"):
            continue
        mine = ours[key]
        ref_std, my_std = ref.std().item(), mine.std().item()
        if ref.dim() >= 2 and not any(n in key for n in ("embed_tokens", "position_embedding", "cls", "boi", "eoi")):
            ref_std *= (ref[0].numel() / mine[0].numel()) ** 0.5
        # both are samples: allow for the spread of a sample std over few values (about 1/sqrt(2n))
        assert abs(my_std / ref_std - 1) < max(0.4, 5 / (2 * min(ref.numel(), mine.numel())) ** 0.5), key
        assert abs(mine.mean().item() - ref.mean().item()) < 0.5 * ref_std + 0.02, key


def test_norm_weights_center_on_one_and_lm_head_scale(tiny_dirs):
    tensors = _written_tensors(tiny_dirs["cogvlm2"])
    assert tensors["model.norm.weight"].mean().item() == pytest.approx(1.0, abs=0.05)
    assert tensors["lm_head.weight"].std().item() == pytest.approx(2.5 / LanguageDims().hidden_size**0.5, rel=0.05)
    assert tensors["model.embed_tokens.weight"].std().item() == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("variant", TINY_VARIANTS)
def test_index_is_consistent_with_shards(variant, tiny_dirs):
    folder = tiny_dirs[variant]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    seen: dict[str, str] = {}
    total = 0
    for shard in SHARD_NAMES:
        with safe_open(str(folder / shard), "pt") as f:
            assert f.metadata() == {"format": "pt"}
            for key in f.keys():  # noqa: SIM118
                seen[key] = shard
                total += f.get_tensor(key).numel() * 4
    assert index["weight_map"] == seen
    assert index["metadata"]["total_size"] == total


@pytest.mark.parametrize("variant", TINY_VARIANTS)
def test_shard_split_matches_fixture_sharded_folder(variant, tiny_dirs):
    reference = json.loads((parity_folder(variant, "-sharded") / "model.safetensors.index.json").read_text())
    ours = json.loads((tiny_dirs[variant] / "model.safetensors.index.json").read_text())
    assert ours["weight_map"] == reference["weight_map"]


@pytest.mark.parametrize("variant", TINY_VARIANTS)
def test_config_json_follows_thudm_fields(variant, tiny_dirs):
    reference = json.loads((parity_folder(variant) / "config.json").read_text())
    ours = json.loads((tiny_dirs[variant] / "config.json").read_text())
    assert set(ours) == set(reference) - {"auto_map", "transformers_version"} | {"model_type"}
    assert ours["architectures"] == reference["architectures"]
    assert ours["vision_config"] == reference["vision_config"]
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "rms_norm_eps"):
        assert ours[key] == reference[key], key
    assert ours["num_attention_heads"] == reference["num_attention_heads"] // 2  # heads of 32, not 16
    half = None if reference.get("num_multi_query_heads") is None else reference["num_multi_query_heads"] // 2
    assert ours.get("num_multi_query_heads") == half
    assert ours["max_position_embeddings"] == 2048
    assert ours["template_version"] == "chat"


def test_config_model_types(tiny_dirs):
    types = {v: json.loads((tiny_dirs[v] / "config.json").read_text())["model_type"] for v in TINY_VARIANTS}
    assert types == {"cogvlm": "cogvlm", "cogvlm2": "cogvlm2", "cogvlm2-video": "cogvlm2_llama3_video"}


def test_generation_config_stop_tokens(tiny_dirs):
    v1 = json.loads((tiny_dirs["cogvlm"] / "generation_config.json").read_text())
    v2 = json.loads((tiny_dirs["cogvlm2"] / "generation_config.json").read_text())
    assert v1 == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    # Llama-3 layout after 1014 regular tokens: bos +0, eos +1, reserved_0 (pad) +2, eot_id +9
    assert v2 == {"bos_token_id": 1014, "eos_token_id": [1015, 1023], "pad_token_id": 1016}
