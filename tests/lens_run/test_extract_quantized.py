"""The lens on a quantized model: ``coglens extract`` with ``quantize:`` stores the inputs and outputs of a
quantized linear layer (its hooks still fire, and see what the layer computes), close to the full-precision run's,
and records the scheme."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml
from lens_run_helpers import EXAMPLES, stored_rows
from testkit import run_cli

import coglens.lens

QUANTIZED_LINEAR = "model.layers.1.mlp.language_mlp.down_proj"  # bitsandbytes/torchao replace it; vision stays
# Measured on the tiny CogVLM2 with int8 (torchao weight-only, CPU), as the largest difference relative to the
# largest value stored: 0.02-0.09 from the full-precision run (errors of every quantized layer before it add up);
# 0.005-0.007 between the stored output and the full-precision layer applied to the stored input (its own error).
RUN_BOUND, LAYER_BOUND = 0.2, 0.02


def _extract(tmp_path: Path, name: str, **settings: object) -> Path:
    db = tmp_path / f"{name}.db"
    config = {"model_path": "tiny:cogvlm2", "input_dir": str(EXAMPLES), "prompt": "What shape is it?",
              "modules": [QUANTIZED_LINEAR], "capture": "both", "tokens": "last", "output": str(db), **settings}
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
    out = run_cli("extract", "--config", str(tmp_path / f"{name}.yaml"), "--quiet")
    assert out.returncode == 0, out.stderr
    return db


def _relative(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def test_extract_captures_a_quantized_linear_close_to_full_precision(tmp_path, tiny_pipeline):
    full = stored_rows(_extract(tmp_path, "full"))
    quantized = stored_rows(_extract(tmp_path, "int8", quantize="int8"))
    assert sorted(quantized) == sorted(full)
    assert {io for _, _, io, _ in full} == {"input", "output"} and len(full) == 2 * len(list(EXAMPLES.iterdir()))
    for key, value in full.items():
        assert 0 < _relative(quantized[key], value) < RUN_BOUND, key  # quantized (not equal), yet close
    layer = tiny_pipeline.model.get_submodule(QUANTIZED_LINEAR)  # the full-precision weights
    for sample, module, io, step in (key for key in quantized if key[2] == "input"):
        given = torch.from_numpy(quantized[sample, module, io, step])
        expected = layer(given).detach().numpy()
        assert _relative(quantized[sample, module, "output", step], expected) < LAYER_BOUND, sample
    with coglens.lens.open(tmp_path / "int8.db") as db:
        settings = json.loads(db.runs()["config"][0])
    assert (settings["quantize"], settings["quantize_vision"]) == ("int8", False)

    # resuming the quantized run in full precision would mix both kinds of rows: refused, naming the setting
    config = yaml.safe_load((tmp_path / "int8.yaml").read_text())
    del config["quantize"]
    (tmp_path / "int8.yaml").write_text(yaml.safe_dump(config))  # the same file: the same run name
    again = run_cli("extract", "--config", str(tmp_path / "int8.yaml"), "--quiet")
    assert again.returncode == 1 and "quantize: 'int8' -> None" in again.stderr, again.stderr
