"""Writing runs: batches as transactions, no duplicates, resume, overwrite, failures, bad input."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from lens_store_helpers import activation_value, batch
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from coglens.lens import (
    ActivationRecord,
    BatchError,
    LensStore,
    RunMismatchError,
    RunNotFoundError,
    SampleRecord,
    open_writer,
)
from coglens.lens import open as open_lens
from coglens.lens.store.errors import FormatError
from coglens.lens.store.schema import activations, runs, samples


def _count(store: LensStore, table) -> int:
    with store.sql_engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_batches_write_samples_with_all_their_activations(db_target):
    with LensStore(db_target) as store:
        run_id = store.start_run("colors", "modules: [layer0, layer1]\n", model_path="tiny/cogvlm")
        store.write_batch(run_id, *batch(["k1", "k2"]))
        store.write_batch(run_id, *batch(["k3"]))
        assert store.completed_sample_keys(run_id) == {"k1", "k2", "k3"}
        assert _count(store, activations) == 6
        store.mark_finished(run_id)
    with open_lens(db_target) as db:
        run = db.runs().iloc[0]
        assert (run["name"], run["status"], run["num_samples"]) == ("colors", "finished", 3)
        assert run["config"] == "modules: [layer0, layer1]\n" and run["model_path"] == "tiny/cogvlm"
        assert run["torch_version"] == torch.__version__ and run["finished_at"] >= run["started_at"]
        stored = db.samples().set_index("key").loc["k2"]
        assert stored["input_ids"].tolist() == [100, 101, 102, 103]
        assert stored["token_type_ids"].tolist() == [0, 1, 1, 0]
        assert (stored["num_tokens"], stored["num_image_tokens"]) == (4, 2)
        assert stored["image_path"] == "/images/k2.png" and stored["dataset_row_id"] == "k2"


def test_rewriting_a_sample_replaces_it_without_duplicates(db_target):
    with LensStore(db_target) as store:
        run_id = store.start_run("r")
        store.write_batch(run_id, *batch(["k1", "k2"]))
        newer = [ActivationRecord("k1", "layer0", torch.full((3,), -1.0))]
        store.write_batch(run_id, [SampleRecord("k1", "rewritten")], newer)
        assert _count(store, samples) == 2
        assert _count(store, activations) == 3  # k1 now has only layer0; k2 keeps two
    with open_lens(db_target) as db:
        values, meta = db.activations("layer0", samples=["k1", "k2"])
        assert values[:, 0].tolist() == [-1.0, activation_value("k2", "layer0")]
        assert db.activations("layer1")[1]["sample_key"].tolist() == ["k2"]


def test_a_failure_mid_batch_stores_nothing_of_that_batch(db_target):
    with LensStore(db_target) as store:
        run_id = store.start_run("r")
        store.write_batch(run_id, *batch(["k1"]))
        _fail_inserts_of_module(store, "boom")
        samples_, activations_ = batch(["k2", "k3"])
        activations_.append(ActivationRecord("k3", "boom", torch.zeros(3)))  # fails after k2's rows went in
        with pytest.raises(DBAPIError, match="simulated disk failure"):
            store.write_batch(run_id, samples_, activations_)
        assert store.completed_sample_keys(run_id) == {"k1"}
        assert _count(store, activations) == 2
        # A failed rewrite leaves the previous version intact too.
        with pytest.raises(DBAPIError):
            store.write_batch(run_id, [SampleRecord("k1", "p")], [ActivationRecord("k1", "boom", torch.zeros(1))])
    with open_lens(db_target) as db:
        values, _ = db.activations("layer1")
        assert values.tolist() == [[activation_value("k1", "layer1")] * 3]


def _fail_inserts_of_module(store: LensStore, module: str) -> None:
    """A trigger that aborts any insert of that module's activations, like a disk failing mid-transaction."""
    with store.sql_engine.begin() as conn:
        if store.sql_engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                f"CREATE TRIGGER fail_{module} BEFORE INSERT ON activations WHEN NEW.module = '{module}' "
                "BEGIN SELECT RAISE(ABORT, 'simulated disk failure'); END"
            )
        else:
            conn.exec_driver_sql(
                f"CREATE FUNCTION fail_{module}() RETURNS trigger AS $$ BEGIN IF NEW.module = '{module}' THEN "
                "RAISE EXCEPTION 'simulated disk failure'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                f"CREATE TRIGGER fail_{module} BEFORE INSERT ON activations "
                f"FOR EACH ROW EXECUTE FUNCTION fail_{module}()"
            )


def test_a_process_killed_mid_batch_leaves_no_half_written_sample(tmp_path):
    # SQLite only: a child process costs seconds; PostgreSQL's rollback on a dropped connection is its own.
    db_target = str(tmp_path / "lens.db")
    with LensStore(db_target) as store:
        run_id = store.start_run("r")
        store.write_batch(run_id, *batch(["k1"]))
    # The child inserts a batch's samples, then dies (os._exit: no cleanup, no commit, no rollback).
    child = textwrap.dedent(
        f"""
        import os, torch
        from coglens.lens.store import coglens_db as store_module
        from coglens.lens import ActivationRecord, LensStore, SampleRecord

        insert_samples = store_module.insert_samples
        def insert_then_die(*args, **kwargs):
            insert_samples(*args, **kwargs)
            os._exit(3)
        store_module.insert_samples = insert_then_die
        store = LensStore({db_target!r})
        store.write_batch({run_id}, [SampleRecord("k2", "p")], [ActivationRecord("k2", "layer0", torch.ones(3))])
        """
    )
    assert subprocess.run([sys.executable, "-c", child], timeout=120).returncode == 3
    with LensStore(db_target) as store:
        assert store.completed_sample_keys(run_id) == {"k1"}
        assert _count(store, activations) == 2


def test_resume_keeps_the_run_and_its_samples(db_target):
    with LensStore(db_target) as store:
        run_id = store.start_run("r", {"batch_size": 2}, model_path="m", model_config_hash="abc")
        store.write_batch(run_id, *batch(["k1", "k2"]))
        store.mark_interrupted(run_id)
    with LensStore(db_target) as store:
        assert store.start_run("r", {"batch_size": 2}, model_path="m", model_config_hash="abc") == run_id
        assert store.completed_sample_keys(run_id) == {"k1", "k2"}
        store.write_batch(run_id, *batch(["k3"]))
    with open_lens(db_target) as db:
        run = db.runs().iloc[0]
        assert (run["status"], run["num_samples"], run["finished_at"]) == ("running", 3, None)


def test_resume_refuses_another_model_and_overwrite_starts_over(db_target):
    with LensStore(db_target) as store:
        run_id = store.start_run("r", model_path="m", model_config_hash="abc")
        store.write_batch(run_id, *batch(["k1", "k2"]))
        other = store.start_run("other")
        store.write_batch(other, *batch(["k1"]))
        with pytest.raises(RunMismatchError, match="model_config_hash='abc', not 'xyz'.*overwrite=True"):
            store.start_run("r", model_path="m", model_config_hash="xyz")
        new_id = store.start_run("r", model_path="m", model_config_hash="xyz", overwrite=True)
        assert store.completed_sample_keys(new_id) == set()
        assert store.completed_sample_keys(other) == {"k1"}  # other runs are untouched
        assert _count(store, samples) == 1 and _count(store, activations) == 2 and _count(store, runs) == 2
        with pytest.raises(RunNotFoundError, match=f"no run with id {run_id}"):
            store.write_batch(run_id, *batch(["k1"]))


def test_failed_runs_record_the_error(db_target):
    with LensStore(db_target) as store:
        run_id = store.start_run("r")
        store.mark_failed(run_id, "CUDA out of memory")
    with open_lens(db_target) as db:
        run = db.runs().iloc[0]
        assert (run["status"], run["error"]) == ("failed", "CUDA out of memory")


@pytest.mark.parametrize(
    ("samples_", "activations_", "message"),
    [
        ([SampleRecord("a", "p"), SampleRecord("a", "p")], [], "sample key 'a' appears twice"),
        ([SampleRecord("a", "p")], [ActivationRecord("b", "m", torch.ones(1))], "sample 'b': that sample is not in"),
        (
            [SampleRecord("a", "p")],
            [ActivationRecord("a", "m", torch.ones(1)), ActivationRecord("a", "m", torch.ones(1))],
            "io='output' step=0 is given twice",
        ),
        ([SampleRecord("a", "p")], [ActivationRecord("a", "m", torch.ones(1), io="inputs")], "io='inputs'"),
        ([SampleRecord("a", "p")], [ActivationRecord("a", "m", torch.ones(1), step=-1)], "step=-1"),
        ([SampleRecord("a", "p", input_ids=[[1, 2]])], [], "input_ids of sample 'a' must be 1-D"),
        ([SampleRecord("a", "p", input_ids=[1.5])], [], "must be integers"),
        ([SampleRecord("a", "p", input_ids=[1, 2], token_type_ids=[0])], [], "2 input_ids but 1 token_type_ids"),
        ([SampleRecord("a", "p", extra={"image": object()})], [], "extra of sample 'a' must be JSON-serialisable"),
    ],
)
def test_inconsistent_batches_are_refused_before_writing(tmp_path, samples_, activations_, message):
    with LensStore(tmp_path / "lens.db") as store:
        run_id = store.start_run("r")
        with pytest.raises(BatchError, match=message):
            store.write_batch(run_id, samples_, activations_)
        assert store.completed_sample_keys(run_id) == set()


def test_token_ids_accept_tensors_and_numpy_steps(tmp_path):
    with LensStore(tmp_path / "lens.db") as store:
        run_id = store.start_run("r")
        record = SampleRecord("a", "p", input_ids=torch.tensor([5, 128002]), token_type_ids=torch.tensor([0, 1]))
        step = torch.tensor(2).numpy()[()]  # a numpy integer, as a runner may produce
        store.write_batch(run_id, [record], [ActivationRecord("a", "m", torch.ones(2), step=step)])
    with open_lens(tmp_path / "lens.db") as db:
        assert db.samples()["input_ids"][0].tolist() == [5, 128002]
        assert db.contents()["step"].tolist() == [2]


def test_open_writer_picks_the_format(tmp_path):
    with open_writer(tmp_path / "a.db") as writer:
        assert isinstance(writer, LensStore)
    with pytest.raises(FormatError, match="output_format 'hdf5' is not supported; use one of coglens, vlm-lens"):
        open_writer(tmp_path / "b.db", "hdf5")


def test_sqlite_is_tuned_for_bulk_writes(tmp_path):
    with LensStore(tmp_path / "lens.db") as store, store.sql_engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
