"""A damaged checkpoint folder fails with one line naming the file and the fix: a cut shard, a config size that is
not a positive integer, a shard index pointing outside the folder."""

from __future__ import annotations

import json

import pytest
from testkit import copy_checkpoint, parity_folder, run_cli

from coglens.modeling import CogvlmForCausalLM
from coglens.modeling.configuration_cogvlm import ConfigError
from coglens.modeling.loading import CheckpointError


def _one_error_line(*args: str) -> str:
    out = run_cli("ask", *args, "--max-new-tokens", "1", "Hi")
    assert out.returncode == 1, out.stdout
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr
    return errors[0]


def test_a_truncated_shard_is_named(tmp_path):
    folder = copy_checkpoint(parity_folder("cogvlm2", "-sharded"), tmp_path / "cut")
    shard = folder / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        CogvlmForCausalLM.from_pretrained(folder)
    line = _one_error_line("--model", str(folder))
    assert str(shard) in line and "truncated or corrupt" in line and "download it again" in line


def _edit(field: str, value: object):
    def edit(config: dict) -> None:
        *parents, name = field.split(".")
        target = config
        for parent in parents:
            target = target[parent]
        target[name] = value

    return edit


@pytest.mark.parametrize(
    ("field", "value"),
    [("hidden_size", "abc"), ("hidden_size", 12.5), ("num_attention_heads", 0), ("vision_config.image_size", "x"),
     ("num_hidden_layers", None), ("vision_config.num_hidden_layers", None), ("vocab_size", 10**12)],
)
def test_a_config_size_that_is_not_a_positive_integer_is_named(tmp_path, field, value):
    folder = copy_checkpoint(parity_folder("cogvlm2"), tmp_path / "bad", config=_edit(field, value))
    line = _one_error_line("--model", str(folder))
    assert line == (
        f"error: config field `{field}` in {folder / 'config.json'} must be a positive integer (at most 16777216), "
        f"got {value!r}"
    )
    with pytest.raises(ConfigError):
        CogvlmForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize(("field", "value"), [("rms_norm_eps", "x"), ("rms_norm_eps", -1.0), ("rope_theta", True),
                                              ("vision_config.layer_norm_eps", None)])
def test_a_config_number_that_is_not_positive_is_named(tmp_path, field, value):
    folder = copy_checkpoint(parity_folder("cogvlm2"), tmp_path / "bad", config=_edit(field, value))
    line = _one_error_line("--model", str(folder))
    assert line == f"error: config field `{field}` in {folder / 'config.json'} must be a positive number, got {value!r}"


@pytest.mark.parametrize("shard", ["../../../../../../etc/passwd", "/etc/passwd", "sub/../../model.safetensors"])
def test_a_shard_index_cannot_point_outside_the_checkpoint(tmp_path, shard):
    folder = copy_checkpoint(parity_folder("cogvlm2", "-sharded"), tmp_path / "evil")
    index = folder / "model.safetensors.index.json"
    values = json.loads(index.read_text())
    first = next(iter(values["weight_map"]))
    values["weight_map"][first] = shard
    index.write_text(json.dumps(values))
    with pytest.raises(CheckpointError, match="outside its folder"):
        CogvlmForCausalLM.from_pretrained(folder)
    assert "outside its folder" in _one_error_line("--model", str(folder))
