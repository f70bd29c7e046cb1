"""Merging per-rank shards of one run (and other runs) into one database."""

from __future__ import annotations

import numpy as np
import pytest
import typer
from lens_store_helpers import activation_value, batch
from typer.testing import CliRunner

from coglens.cli.merge import merge_command
from coglens.lens import LensDatabaseError, LensStore, RunMismatchError, merge_databases
from coglens.lens import open as open_lens


def _shard(path, run: str, keys: list[str], *, finished: bool = True, model: str = "tiny") -> str:
    with LensStore(path) as store:
        run_id = store.start_run(run, "layers: all", model_path=model)
        store.write_batch(run_id, *batch(keys))
        if finished:
            store.mark_finished(run_id)
    return str(path)


def test_shards_of_one_run_become_one_run(tmp_path, db_target):
    rank0 = _shard(tmp_path / "rank0.db", "colors", ["k1", "k2", "k3"])
    rank1 = _shard(tmp_path / "rank1.db", "colors", ["k3", "k4"])  # k3 was retried on both ranks
    other = _shard(tmp_path / "other.db", "shapes", ["k7"], finished=False)
    report = merge_databases([rank0, rank1, other], db_target)
    assert report.added == {"colors": 4, "shapes": 1}
    assert report.skipped == {"colors": 1, "shapes": 0}
    with open_lens(db_target) as db:
        runs = db.runs().set_index("name")
        assert runs.loc["colors", "num_samples"] == 4 and runs.loc["colors", "status"] == "finished"
        assert runs.loc["shapes", "status"] == "running"
        assert runs.loc["colors", "config"] == "layers: all"
        values, meta = db.activations("layer1", run="colors")
        assert meta["sample_key"].tolist() == ["k1", "k2", "k3", "k4"]
        expected = [[activation_value(key, "layer1")] * 3 for key in ["k1", "k2", "k3", "k4"]]
        np.testing.assert_array_equal(values, np.array(expected, dtype=np.float32))
        samples = db.samples("colors").set_index("key")
        assert samples.loc["k4", "input_ids"].tolist() == [100, 101, 102, 103]


def test_merging_again_adds_nothing_and_an_unfinished_shard_is_visible(tmp_path):
    rank0 = _shard(tmp_path / "rank0.db", "colors", ["k1"])
    rank1 = _shard(tmp_path / "rank1.db", "colors", ["k2"], finished=False)
    dest = tmp_path / "merged.db"
    merge_databases([rank0], dest)
    report = merge_databases([rank0, rank1], dest)
    assert (report.added, report.skipped) == ({"colors": 1}, {"colors": 1})
    with open_lens(dest) as db:
        run = db.runs().iloc[0]
        assert (run["num_samples"], run["status"], run["finished_at"]) == (2, "running", None)


def test_refuses_what_cannot_be_merged(tmp_path):
    rank0 = _shard(tmp_path / "rank0.db", "colors", ["k1"])
    other_model = _shard(tmp_path / "other.db", "colors", ["k2"], model="big")
    with pytest.raises(RunMismatchError, match="run 'colors' of .*other.db was made with model_path='tiny'"):
        merge_databases([rank0, other_model], tmp_path / "merged.db")
    with pytest.raises(LensDatabaseError, match="rank0.db is also a source"):
        merge_databases([rank0], rank0)
    with pytest.raises(LensDatabaseError, match="no database at .*nope.db"):
        merge_databases([rank0, tmp_path / "nope.db"], tmp_path / "never.db")
    assert not (tmp_path / "never.db").exists()  # sources are checked before anything is written


def test_cli_merge(tmp_path):
    app = typer.Typer()
    app.command()(merge_command)
    rank0 = _shard(tmp_path / "rank0.db", "colors", ["k1", "k2"])
    rank1 = _shard(tmp_path / "rank1.db", "colors", ["k2", "k3"])
    result = CliRunner().invoke(app, [str(tmp_path / "all.db"), rank0, rank1])
    assert result.exit_code == 0, result.output
    assert "colors: 3 samples added, 1 already present" in result.output
    failed = CliRunner().invoke(app, [str(tmp_path / "all2.db"), str(tmp_path / "missing.db")])
    assert failed.exit_code == 1 and "error: no database at" in failed.output
