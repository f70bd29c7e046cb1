"""Same arguments, same bytes; the seed and dtype options change only what they should."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import load_file

from coglens.tiny import TINY_VARIANTS, TinyDtypeError, TinyOutputDirError, write_tiny_checkpoint
from coglens.tiny.checkpoint import CHECKPOINT_FILES, SHARD_NAMES


@pytest.mark.parametrize("variant", TINY_VARIANTS)
def test_same_seed_gives_byte_identical_folders(variant, tmp_path, tiny_dirs):
    again = write_tiny_checkpoint(variant, tmp_path / "again")
    assert {p.name for p in again.iterdir()} == CHECKPOINT_FILES
    for name in CHECKPOINT_FILES:
        assert (again / name).read_bytes() == (tiny_dirs[variant] / name).read_bytes(), name


def test_other_seed_changes_weights_only(tmp_path, tiny_dirs):
    other = write_tiny_checkpoint("cogvlm2", tmp_path / "seed1", seed=1)
    base = tiny_dirs["cogvlm2"]
    first, second = load_file(base / SHARD_NAMES[0]), load_file(other / SHARD_NAMES[0])
    assert not torch.equal(first["model.embed_tokens.weight"], second["model.embed_tokens.weight"])
    assert torch.equal(first["model.layers.0.self_attn.rotary_emb.inv_freq"],
                       second["model.layers.0.self_attn.rotary_emb.inv_freq"])
    for name in ("config.json", "tokenizer.json", "model.safetensors.index.json"):
        assert (other / name).read_bytes() == (base / name).read_bytes(), name


def test_bfloat16_option_rounds_the_float32_draws(tmp_path, tiny_dirs):
    bf16 = write_tiny_checkpoint("cogvlm", tmp_path / "bf16", dtype=torch.bfloat16)
    for shard in SHARD_NAMES:
        ours, reference = load_file(bf16 / shard), load_file(tiny_dirs["cogvlm"] / shard)
        assert ours.keys() == reference.keys()
        for key, tensor in ours.items():
            assert tensor.dtype == torch.bfloat16
            assert torch.equal(tensor, reference[key].to(torch.bfloat16)), key
    assert '"torch_dtype": "bfloat16"' in (bf16 / "config.json").read_text()
    total_sizes = [
        json.loads((folder / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
        for folder in (bf16, tiny_dirs["cogvlm"])
    ]
    assert total_sizes[0] * 2 == total_sizes[1]


def test_integer_dtype_is_refused(tmp_path):
    with pytest.raises(TinyDtypeError, match="floating point"):
        write_tiny_checkpoint("cogvlm", tmp_path / "x", dtype=torch.int8)


def test_unknown_variant_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="cogvlm, cogvlm2, cogvlm2-video"):
        write_tiny_checkpoint("cogvlm3", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_folder_with_other_files_is_refused_but_own_files_are_rewritten(tmp_path):
    target = write_tiny_checkpoint("cogvlm", tmp_path / "ckpt")
    write_tiny_checkpoint("cogvlm", target)  # rewriting our own files is fine
    (target / "notes.txt").write_text("mine")
    with pytest.raises(TinyOutputDirError, match="notes.txt"):
        write_tiny_checkpoint("cogvlm", target)


def test_build_takes_well_under_a_few_seconds(tmp_path):
    write_tiny_checkpoint("cogvlm", tmp_path / "warm")  # first call pays lazy imports
    start = time.perf_counter()
    for variant in TINY_VARIANTS:
        write_tiny_checkpoint(variant, tmp_path / variant)
    assert time.perf_counter() - start < 3.0
