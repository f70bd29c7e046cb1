"""Export to .npz / .safetensors / .parquet, read back with numpy / safetensors / pyarrow (no CogLens)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import typer
from lens_store_helpers import activation_value, batch
from safetensors import safe_open
from typer.testing import CliRunner

from coglens.cli.export import export_command
from coglens.lens import ActivationNotFoundError, ActivationRecord, FormatError, LensStore, RunNotFoundError, export

KEYS = ["k1", "k2", "k3"]


@pytest.fixture
def lens_db(db_target) -> str:
    """Run "r": layer0 (bfloat16, shape (2,)), layer1 float32 (3,), layer1 input and layer0 step 2."""
    with LensStore(db_target) as store:
        run_id = store.start_run("r")
        samples, activations = batch(KEYS, modules=("layer1",), k1="cat", k3="dog")
        activations += [
            ActivationRecord(key, "layer0", torch.full((2,), activation_value(key, "layer0"), dtype=torch.bfloat16))
            for key in KEYS
        ]
        activations += [ActivationRecord(key, "layer1", torch.zeros(3), io="input") for key in KEYS]
        activations += [ActivationRecord("k2", "layer0", torch.ones(2, dtype=torch.bfloat16), step=2)]
        store.write_batch(run_id, samples, activations)
    return db_target


def _column(module: str, n: int) -> np.ndarray:
    return np.array([[activation_value(key, module)] * n for key in KEYS], dtype=np.float32)


def test_npz(lens_db, tmp_path):
    out = export(lens_db, tmp_path / "acts.npz")
    with np.load(out, allow_pickle=False) as npz:
        names = {name for name in npz.files if not name.startswith("__")}
        assert names == {"layer0", "layer0@step2", "layer1", "layer1:input"}
        np.testing.assert_array_equal(npz["layer0"], _column("layer0", 2))  # bfloat16 -> float32
        np.testing.assert_array_equal(npz["layer1"], _column("layer1", 3))
        assert npz["layer1"].dtype == np.float32
        assert npz["__sample_keys__/layer1"].tolist() == KEYS
        assert npz["__labels__/layer1"].tolist() == ["cat", "", "dog"]
        assert npz["__sample_keys__/layer0@step2"].tolist() == ["k2"]


def test_safetensors_keeps_bfloat16(lens_db, tmp_path):
    out = export(lens_db, tmp_path / "acts.safetensors", modules=["layer0"])
    with safe_open(str(out), framework="pt") as file:
        assert set(file.keys()) == {"layer0", "layer0@step2"}
        layer0 = file.get_tensor("layer0")
        metadata = file.metadata()
    assert layer0.dtype == torch.bfloat16
    assert layer0.float().numpy().tolist() == _column("layer0", 2).tolist()
    assert metadata["run"] == "r" and metadata["format"] == "coglens-lens-export"
    assert json.loads(metadata["sample_keys"])["layer0"] == KEYS
    assert json.loads(metadata["labels"])["layer0@step2"] == [""]


def test_parquet_long_format(lens_db, tmp_path):
    out = export(lens_db, tmp_path / "acts.parquet")
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 3 * 3 + 1
    by_id = {(row["sample_key"], row["module"], row["io"], row["step"]): row for row in rows}
    k3 = by_id[("k3", "layer1", "output", 0)]
    assert (k3["run"], k3["label"], k3["dtype"], k3["shape"]) == ("r", "dog", "float32", [3])
    assert k3["values"] == [activation_value("k3", "layer1")] * 3
    assert by_id[("k2", "layer0", "output", 2)]["values"] == [1.0, 1.0]
    assert by_id[("k1", "layer0", "output", 0)]["dtype"] == "bfloat16"


def test_parquet_holds_any_shapes(tmp_path):
    with LensStore(tmp_path / "lens.db") as store:
        run_id = store.start_run("r")
        samples, _ = batch(["k1", "k2"])
        ragged = [
            ActivationRecord("k1", "m", torch.arange(6.0).reshape(2, 3)),
            ActivationRecord("k2", "m", torch.ones(1, 3)),
        ]
        store.write_batch(run_id, samples, ragged)
    rows = pq.read_table(export(tmp_path / "lens.db", tmp_path / "ragged.parquet")).to_pylist()
    restored = [np.array(row["values"]).reshape(row["shape"]) for row in rows]
    assert restored[0].tolist() == [[0, 1, 2], [3, 4, 5]] and restored[1].tolist() == [[1, 1, 1]]


def test_bad_requests(lens_db, tmp_path):
    with pytest.raises(FormatError, match="cannot tell the export format of .*acts.csv.*end it with .npz"):
        export(lens_db, tmp_path / "acts.csv")
    with pytest.raises(
        ActivationNotFoundError, match="no activations of module\\(s\\) 'layer9'; stored: layer0, layer1"
    ):
        export(lens_db, tmp_path / "acts.npz", modules=["layer9"])
    with pytest.raises(RunNotFoundError, match="no run 'q'"):
        export(lens_db, tmp_path / "acts.npz", run="q")
    assert export(lens_db, tmp_path / "explicit.bin", format="npz").exists()


def test_cli_export(lens_db, tmp_path):
    app = typer.Typer()
    app.command()(export_command)
    out = tmp_path / "cli.npz"
    result = CliRunner().invoke(app, [lens_db, str(out), "--run", "r", "--module", "layer1"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    with np.load(out) as npz:
        assert sorted(npz.files) == sorted(
            [
                "layer1",
                "layer1:input",
                "__sample_keys__/layer1",
                "__sample_keys__/layer1:input",
                "__labels__/layer1",
                "__labels__/layer1:input",
            ]
        )
    failed = CliRunner().invoke(app, [lens_db, str(tmp_path / "x.npz"), "--run", "nope"])
    assert failed.exit_code == 1 and "error: no run 'nope'" in failed.output and "Traceback" not in failed.output
