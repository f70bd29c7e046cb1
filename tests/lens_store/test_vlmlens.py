"""`output_format: vlm-lens`: VLM-Lens's exact `tensors` table, read the way a VLM-Lens notebook does."""

from __future__ import annotations

import io
import sqlite3

import pytest
import torch

from coglens.lens import (
    ActivationRecord,
    BatchError,
    LensDatabaseError,
    LensDB,
    LensStore,
    SampleRecord,
    VlmLensStore,
    open_writer,
)

# PRAGMA table_info of VLM-Lens's DDL: (cid, name, type, notnull, default, pk).
VLM_LENS_COLUMNS = [
    (0, "id", "INTEGER", 0, None, 1),
    (1, "name", "TEXT", 1, None, 0),
    (2, "architecture", "TEXT", 1, None, 0),
    (3, "timestamp", "DATETIME", 0, "CURRENT_TIMESTAMP", 0),
    (4, "image_path", "TEXT", 0, None, 0),
    (5, "image_id", "INTEGER", 0, None, 0),
    (6, "prompt", "TEXT", 1, None, 0),
    (7, "label", "TEXT", 0, None, 0),
    (8, "layer", "TEXT", 1, None, 0),
    (9, "pooling_method", "TEXT", 0, None, 0),
    (10, "tensor_dim", "INTEGER", 1, None, 0),
    (11, "tensor", "BLOB", 1, None, 0),
]


def _write(path, keys: list[str], *, run: str = "colors", overwrite: bool = False) -> None:
    with open_writer(path, "vlm-lens") as store:
        run_id = store.start_run(run, model_path="THUDM/cogvlm-chat-hf", architecture="cogvlm", overwrite=overwrite)
        samples = [
            SampleRecord(key, "Describe the color.", image_path=f"/data/{key}.jpg", label="red", dataset_row_id=i)
            for i, key in enumerate(keys)
        ]
        batch = torch.arange(2 * 5 * 4, dtype=torch.float32).reshape(2, 5, 4)  # a batch the runner slices
        activations = []
        for i, key in enumerate(keys):
            activations.append(ActivationRecord(key, "model.vision.transformer.layers.62", batch[i % 2]))
            activations.append(ActivationRecord(key, "lm_head", batch[i % 2].mean(0), pooling="mean"))
        store.write_batch(run_id, samples, activations)
        store.mark_finished(run_id)


def _vlm_lens_rows(path) -> list[tuple]:
    """Exactly what a VLM-Lens user runs."""
    connection = sqlite3.connect(path)
    cursor = connection.cursor()
    cursor.execute(
        "SELECT name, architecture, image_path, image_id, prompt, label, layer, pooling_method, tensor_dim, tensor "
        "FROM tensors"
    )
    rows = cursor.fetchall()
    connection.close()
    return [(*row[:-1], torch.load(io.BytesIO(row[-1]), weights_only=True)) for row in rows]


def test_the_tensors_table_is_vlm_lens_s(tmp_path):
    _write(tmp_path / "vlm.db", ["a", "b"])
    with sqlite3.connect(tmp_path / "vlm.db") as conn:
        assert conn.execute("PRAGMA table_info(tensors)").fetchall() == VLM_LENS_COLUMNS


def test_rows_read_back_with_torch_load(tmp_path):
    _write(tmp_path / "vlm.db", ["a", "b"])
    rows = _vlm_lens_rows(tmp_path / "vlm.db")
    assert [row[6] for row in rows] == ["model.vision.transformer.layers.62", "lm_head"] * 2
    name, arch, image_path, image_id, prompt, label, layer, pooling, dim, tensor = rows[2]
    assert (name, arch, image_path, image_id, prompt, label) == (
        "THUDM/cogvlm-chat-hf",
        "cogvlm",
        "/data/b.jpg",
        1,
        "Describe the color.",
        "red",
    )
    expected = torch.arange(20, 40, dtype=torch.float32).reshape(1, 5, 4)  # batch[1], with VLM-Lens's batch dim
    assert (layer, pooling, dim) == ("model.vision.transformer.layers.62", None, 4)
    assert torch.equal(tensor, expected)
    assert tensor.untyped_storage().nbytes() == 5 * 4 * 4  # the slice alone was saved, not the whole batch
    pooled = rows[3]
    assert (pooled[7], pooled[8]) == ("mean", 4) and torch.equal(pooled[9], expected.mean(1))


def test_resume_rewrite_and_overwrite(tmp_path):
    path = tmp_path / "vlm.db"
    _write(path, ["a", "b"])
    with VlmLensStore(path) as store:
        run_id = store.start_run("colors", model_path="THUDM/cogvlm-chat-hf")
        assert store.completed_sample_keys(run_id) == {"a", "b"}
    _write(path, ["b", "c"])  # b is rewritten, not duplicated
    assert len(_vlm_lens_rows(path)) == 6
    _write(path, ["x"], run="shapes")
    _write(path, ["d"], overwrite=True)  # replaces run "colors" only
    assert sorted({row[2] for row in _vlm_lens_rows(path)}) == ["/data/d.jpg", "/data/x.jpg"]


def test_existing_vlm_lens_files_are_appended_to(tmp_path):
    path = tmp_path / "vlm.db"
    with sqlite3.connect(path) as conn:
        ddl = ", ".join(f"{c[1]} {c[2]}" for c in VLM_LENS_COLUMNS)
        conn.execute(f"CREATE TABLE tensors ({ddl})")
        conn.execute(
            "INSERT INTO tensors (name, architecture, prompt, layer, tensor_dim, tensor) VALUES (?,?,?,?,?,?)",
            ("old", "cogvlm", "p", "lm_head", 1, b""),
        )
    _write(path, ["a"])
    with sqlite3.connect(path) as conn:
        assert [row[0] for row in conn.execute("SELECT name FROM tensors ORDER BY id")] == ["old"] + [
            "THUDM/cogvlm-chat-hf"
        ] * 2


def test_formats_are_not_mixed(tmp_path):
    _write(tmp_path / "vlm.db", ["a"])
    with pytest.raises(LensDatabaseError, match="is a 'vlm-lens' database, not 'coglens'.*output_format: vlm-lens"):
        LensDB(tmp_path / "vlm.db")
    with pytest.raises(LensDatabaseError, match="is a 'vlm-lens' database, not 'coglens'"):
        LensStore(tmp_path / "vlm.db")
    LensStore(tmp_path / "ours.db").close()
    with pytest.raises(LensDatabaseError, match="is a 'coglens' database, not 'vlm-lens'"):
        VlmLensStore(tmp_path / "ours.db")


@pytest.mark.postgres
def test_vlm_lens_format_is_sqlite_only(pg_url):
    with pytest.raises(LensDatabaseError, match="output_format: vlm-lens writes a SQLite file"):
        VlmLensStore(pg_url)


def test_batches_are_checked_like_the_coglens_format(tmp_path):
    with VlmLensStore(tmp_path / "vlm.db") as store:
        run_id = store.start_run("colors")
        store.write_batch(run_id, [], [])  # nothing to write is not an error
        with pytest.raises(BatchError, match="sample 'b': that sample is not in this batch"):
            store.write_batch(run_id, [SampleRecord("a", "p")], [ActivationRecord("b", "m", torch.ones(1))])
        assert store.completed_sample_keys(run_id) == set()
    with sqlite3.connect(tmp_path / "vlm.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM tensors").fetchone() == (0,)
