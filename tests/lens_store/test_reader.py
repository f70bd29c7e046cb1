"""Reading back: listings, filters, stacking, streaming, and clear errors for bad input."""

from __future__ import annotations

import sqlite3
import sys

import numpy as np
import pytest
import torch
from lens_store_helpers import activation_value, batch, sample

from coglens.lens import (
    ActivationNotFoundError,
    ActivationRecord,
    ActivationShapeError,
    LensDatabaseError,
    LensDB,
    LensStore,
    RunNotFoundError,
    SampleRecord,
)
from coglens.lens import open as open_lens


@pytest.fixture
def filled(db_target) -> str:
    """Run "probe": k1..k5 labelled red/blue, layer0/layer1 of shape (2, 3), layer1 input, decode steps."""
    labels = {"k1": "red", "k2": "blue", "k3": "red", "k4": "blue", "k5": "red"}
    with LensStore(db_target) as store:
        run_id = store.start_run("probe", model_path="tiny")
        samples, activations = batch(list(labels), shape=(2, 3), **labels)
        activations += [ActivationRecord(key, "layer1", torch.full((2, 3), -1.0), io="input") for key in labels]
        # Generation stopped early for k4 and k5: they have no step 1.
        activations += [
            ActivationRecord(key, "layer0", torch.full((3,), activation_value(key, "layer0", 1)), step=1)
            for key in ("k1", "k2", "k3")
        ]
        store.write_batch(run_id, samples[:2], [a for a in activations if a.sample_key in ("k1", "k2")])
        store.write_batch(run_id, samples[2:], [a for a in activations if a.sample_key not in ("k1", "k2")])
        store.mark_finished(run_id)
    return db_target


def _expected(keys, module, shape=(2, 3), step=0):
    return np.stack([np.full(shape, activation_value(key, module, step), dtype=np.float32) for key in keys])


def test_listings(filled):
    with open_lens(filled) as db:
        assert db.runs()["name"].tolist() == ["probe"]
        assert db.modules() == ["layer0", "layer1"]
        contents = db.contents()
        assert contents[["module", "io", "step", "num_samples"]].values.tolist() == [
            ["layer0", "output", 0, 5],
            ["layer0", "output", 1, 3],
            ["layer1", "input", 0, 5],
            ["layer1", "output", 0, 5],
        ]
        assert db.samples()["key"].tolist() == ["k1", "k2", "k3", "k4", "k5"]
        assert db.samples("probe")["label"].tolist() == ["red", "blue", "red", "blue", "red"]


def test_activations_stack_over_samples_in_storage_order(filled):
    with open_lens(filled) as db:
        values, meta = db.activations("layer1")
    np.testing.assert_array_equal(values, _expected(["k1", "k2", "k3", "k4", "k5"], "layer1"))
    assert values.dtype == np.float32 and values.flags.writeable
    assert meta["sample_key"].tolist() == ["k1", "k2", "k3", "k4", "k5"]
    first = meta.iloc[0]
    assert (first["run"], first["label"], first["image_path"], first["prompt"]) == (
        "probe",
        "red",
        "/images/k1.png",
        "prompt of k1",
    )
    assert (first["selection"], first["pooling"], first["shape"], first["dtype"]) == ("all", None, (2, 3), "float32")


def test_label_and_sample_filters(filled):
    with open_lens(filled) as db:
        values, meta = db.activations("layer0", label="blue")
        assert meta["sample_key"].tolist() == ["k2", "k4"]
        np.testing.assert_array_equal(values, _expected(["k2", "k4"], "layer0"))
        assert db.activations("layer0", label=["blue", "red"])[0].shape == (5, 2, 3)
        values, meta = db.activations("layer0", samples=["k5", "k1"])  # the requested order
        np.testing.assert_array_equal(values, _expected(["k5", "k1"], "layer0"))
        assert db.activations("layer0", samples=["k5", "k1"], label="red")[1]["sample_key"].tolist() == ["k5", "k1"]


def test_requested_samples_must_exist(filled):
    with open_lens(filled) as db, pytest.raises(ActivationNotFoundError, match="1 requested sample keys.*'k9'"):
        db.activations("layer0", samples=["k1", "k9"])


def test_filtered_out_samples_with_label_are_reported(filled):
    with open_lens(filled) as db, pytest.raises(ActivationNotFoundError, match="with label 'red': 'k2'"):
        db.activations("layer0", samples=["k1", "k2"], label="red")


def test_io_and_steps(filled):
    with open_lens(filled) as db:
        values, _ = db.activations("layer1", io="input")
        assert (values == -1).all() and values.shape == (5, 2, 3)
        values, meta = db.activations("layer0", step=1)  # samples without step 1 are skipped
        assert meta["sample_key"].tolist() == ["k1", "k2", "k3"]
        np.testing.assert_array_equal(values, _expected(["k1", "k2", "k3"], "layer0", shape=(3,), step=1))
        with pytest.raises(ActivationNotFoundError, match="requested samples 'k4' have no activation of 'layer0'"):
            db.activations("layer0", step=1, samples=["k1", "k4"])  # unless they were asked for


def test_empty_selection_keeps_the_activation_shape(filled):
    with open_lens(filled) as db:
        values, meta = db.activations("layer0", label="green")
    assert values.shape == (0, 2, 3) and len(meta) == 0


def test_iter_activations_streams_chunks(filled):
    with open_lens(filled) as db:
        chunks = list(db.iter_activations("layer0", chunk_size=2))
        whole, _ = db.activations("layer0")
    assert [len(meta) for _, meta in chunks] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate([values for values, _ in chunks]), whole)


def test_torch_output_keeps_bfloat16(tmp_path):
    with LensStore(tmp_path / "lens.db") as store:
        run_id = store.start_run("r")
        tensors = {"a": torch.tensor([1.5, -2.0], dtype=torch.bfloat16), "b": torch.tensor([3.0, 0.25])}
        records = [ActivationRecord(k, "m", t.to(torch.bfloat16)) for k, t in tensors.items()]
        store.write_batch(run_id, [sample("a"), sample("b")], records)
    with open_lens(tmp_path / "lens.db") as db:
        as_torch, meta = db.activations("m", as_="torch")
        as_numpy, _ = db.activations("m")
    assert as_torch.dtype == torch.bfloat16 and as_torch.tolist() == [[1.5, -2.0], [3.0, 0.25]]
    assert as_numpy.dtype == np.float32 and as_numpy.tolist() == [[1.5, -2.0], [3.0, 0.25]]
    assert meta["dtype"].tolist() == ["bfloat16", "bfloat16"]


def test_different_shapes_cannot_be_stacked(tmp_path):
    with LensStore(tmp_path / "lens.db") as store:
        run_id = store.start_run("r")
        records = [ActivationRecord("a", "m", torch.zeros(4, 8)), ActivationRecord("b", "m", torch.ones(6, 8))]
        store.write_batch(run_id, [sample("a"), sample("b")], records)
    with open_lens(tmp_path / "lens.db") as db:
        with pytest.raises(ActivationShapeError, match=r"\[4, 8\] float32 for 'a', \[6, 8\] float32 for 'b'.*pooling"):
            db.activations("m")
        with pytest.raises(ActivationShapeError, match=r"stack=False"):
            list(db.iter_activations("m", chunk_size=1))  # chunks are held to the first one's shape
        [(unstacked, meta)] = list(db.iter_activations("m", stack=False))
    assert [values.shape for values in unstacked] == [(4, 8), (6, 8)] and unstacked[1].sum() == 48
    assert meta["shape"].tolist() == [(4, 8), (6, 8)]


def test_runs_are_resolved_by_name_or_id_and_ambiguity_is_an_error(db_target):
    with LensStore(db_target) as store:
        first = store.start_run("colors")
        store.write_batch(first, *batch(["k1"]))
        second = store.start_run("shapes")
        store.write_batch(second, *batch(["k2", "k3"]))
    with open_lens(db_target) as db:
        with pytest.raises(RunNotFoundError, match="holds 2 runs \\('colors', 'shapes'\\); pass run=NAME"):
            db.activations("layer0")
        assert db.activations("layer0", run="shapes")[1]["sample_key"].tolist() == ["k2", "k3"]
        assert db.activations("layer0", run=first)[1]["sample_key"].tolist() == ["k1"]
        assert db.samples()["run"].tolist() == ["colors", "shapes", "shapes"]
        with pytest.raises(RunNotFoundError, match="no run 'color' in .*did you mean 'colors'"):
            db.activations("layer0", run="color")


def test_unknown_modules_and_steps_are_explained(filled):
    with open_lens(filled) as db:
        with pytest.raises(
            ActivationNotFoundError, match="no activations of module 'layer' .*did you mean 'layer1', 'layer0'"
        ):
            db.activations("layer")
        with pytest.raises(
            ActivationNotFoundError, match="no io='output' step=5 .*io='output' step=0, io='output' step=1"
        ):
            db.activations("layer0", step=5)


def test_tables_fall_back_to_records_without_pandas(filled, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # makes `import pandas` raise ImportError
    with open_lens(filled) as db:
        _, meta = db.activations("layer0", label="blue")
        runs = db.runs()
    assert [row["sample_key"] for row in meta] == ["k2", "k4"]
    assert runs[0]["name"] == "probe"


# -- databases that are not lens databases ---------------------------------------------------------------


def test_missing_path_and_directories(tmp_path):
    with pytest.raises(LensDatabaseError, match="no database at .*missing.db: check the path"):
        LensDB(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()  # reading never creates a file
    with pytest.raises(LensDatabaseError, match="is a directory; give a database file path"):
        LensDB(tmp_path)


def test_files_that_are_not_sqlite(tmp_path):
    text = tmp_path / "notes.db"
    text.write_text("these are not the tables you are looking for\n" * 20)
    with pytest.raises(LensDatabaseError, match="cannot open .*notes.db: file is not a database"):
        LensDB(text)


def test_databases_of_other_tools(tmp_path):
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    with pytest.raises(LensDatabaseError, match="not a CogLens lens database \\(tables: users\\); check the path"):
        LensDB(other)
    with pytest.raises(LensDatabaseError, match="already holds tables of another tool \\(users\\)"):
        LensStore(other)
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(LensDatabaseError, match="is empty: no lens run has been written to it"):
        LensDB(empty)


def test_vlm_lens_databases_are_recognised(tmp_path):
    vlm = tmp_path / "vlm.db"
    with sqlite3.connect(vlm) as conn:
        conn.execute("CREATE TABLE tensors (id INTEGER PRIMARY KEY, tensor BLOB NOT NULL)")
    with pytest.raises(LensDatabaseError, match="looks like a VLM-Lens database.*torch.save pickles"):
        LensDB(vlm)


def test_unreachable_server_and_bad_urls():
    with pytest.raises(LensDatabaseError, match="cannot open postgresql\\+psycopg://nobody@127.0.0.1:9/none"):
        LensDB("postgresql+psycopg://nobody@127.0.0.1:9/none")
    with pytest.raises(LensDatabaseError, match="no database driver for nosuchdb://"):
        LensDB("nosuchdb://x/y")


def test_a_run_of_a_store_that_was_never_started(tmp_path):
    with LensStore(tmp_path / "lens.db") as store, pytest.raises(RunNotFoundError, match="call start_run"):
        store.write_batch(42, [SampleRecord("a", "p")], [])
