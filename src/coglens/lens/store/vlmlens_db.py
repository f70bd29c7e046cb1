"""`output_format: vlm-lens`: VLM-Lens's `tensors` table, exactly, so existing VLM-Lens notebooks keep working.

Each row holds a `torch.save` archive of one captured tensor with a leading batch dimension of 1, as VLM-Lens's
forward hooks stored it, and `tensor_dim` its last dimension. Writing those archives is safe; read them with
`torch.load(io.BytesIO(blob), weights_only=True)`, never plain `torch.load` (a pickle can run code).

VLM-Lens has no runs, resume or overwrite; three bookkeeping tables next to `tensors` (which stays untouched)
record which rows belong to which run and sample. Written in batched transactions like the CogLens format.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    delete,
    insert,
    select,
    text,
)

from coglens.lens.store.connection import chunks
from coglens.lens.store.errors import LensDatabaseError
from coglens.lens.store.formats import VLMLENS_FORMAT
from coglens.lens.store.records import ActivationRecord, SampleRecord
from coglens.lens.store.rows import check_batch
from coglens.lens.store.schema import Id, prepare_schema, runs_table
from coglens.lens.store.writer import LensWriter
from coglens.modeling.configuration_cogvlm import COGVLM

# VLM-Lens's own DDL, verbatim, so `sqlite3 db .schema` shows users exactly the table they know.
TENSORS_DDL = """CREATE TABLE IF NOT EXISTS tensors (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    architecture TEXT NOT NULL,
    timestamp DATETIME DEFAULT CURRENT_TIMESTAMP,
    image_path TEXT NULL,
    image_id INTEGER NULL,
    prompt TEXT NOT NULL,
    label TEXT NULL,
    layer TEXT NOT NULL,
    pooling_method TEXT NULL,
    tensor_dim INTEGER NOT NULL,
    tensor BLOB NOT NULL
)"""

DEFAULT_ARCHITECTURE = COGVLM  # the `architecture` of a run that does not name its variant

# Mirrors TENSORS_DDL for SQLAlchemy statements; never used to create the table.
tensors = Table(
    "tensors",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False),
    Column("architecture", Text, nullable=False),
    Column("timestamp", DateTime, server_default=text("CURRENT_TIMESTAMP")),
    Column("image_path", Text),
    Column("image_id", Integer),
    Column("prompt", Text, nullable=False),
    Column("label", Text),
    Column("layer", Text, nullable=False),
    Column("pooling_method", Text),
    Column("tensor_dim", Integer, nullable=False),
    Column("tensor", LargeBinary, nullable=False),
)

bookkeeping = MetaData()
vlmlens_runs = runs_table("coglens_vlmlens_runs", bookkeeping)
vlmlens_samples = Table(
    "coglens_vlmlens_samples",
    bookkeeping,
    Column("id", Id, primary_key=True),
    Column("run_id", Id, ForeignKey("coglens_vlmlens_runs.id", ondelete="CASCADE"), nullable=False),
    Column("sample_key", Text, nullable=False),
    UniqueConstraint("run_id", "sample_key", name="uq_vlmlens_samples_run_key"),
)
vlmlens_rows = Table(
    "coglens_vlmlens_rows",
    bookkeeping,
    Column("tensor_id", Integer, primary_key=True, autoincrement=False),  # tensors.id
    Column("sample_id", Id, ForeignKey("coglens_vlmlens_samples.id", ondelete="CASCADE"), nullable=False),
    Index("ix_vlmlens_rows_sample", "sample_id"),
)


def layer_name(module: str, io_: str) -> str:
    """VLM-Lens only knows module outputs; a captured input is stored under `<module>:input`."""
    return module if io_ == "output" else f"{module}:input"


def tensor_blob(tensor: torch.Tensor) -> tuple[bytes, int]:
    """(torch.save bytes of `tensor` with a leading batch dim of 1, its last dimension) as VLM-Lens wrote."""
    # clone(): torch.save of a view would store the whole underlying storage (e.g. the full batch).
    batched = tensor.detach().to("cpu").unsqueeze(0).clone()
    buffer = io.BytesIO()
    torch.save(batched, buffer)
    return buffer.getvalue(), batched.shape[-1]


class VlmLensStore(LensWriter):
    """A SQLite file written in VLM-Lens's layout (the `LensWriter` contract, like `LensStore`)."""

    runs = vlmlens_runs
    samples = vlmlens_samples

    def __init__(self, target: str | os.PathLike[str]) -> None:
        super().__init__(target)
        if self.sql_engine.dialect.name != "sqlite":
            self.close()
            raise LensDatabaseError(
                f"output_format: vlm-lens writes a SQLite file, as VLM-Lens does, not {self.name}; give a file "
                "path, or use output_format: coglens for PostgreSQL"
            )
        prepare_schema(
            self.sql_engine, self.name, fmt=VLMLENS_FORMAT, tables=bookkeeping, create=True, accept_unmarked={"tensors"}
        )
        with self.sql_engine.begin() as conn:
            conn.exec_driver_sql(TENSORS_DDL)

    def _delete_run_rows(self, conn: Connection, run_id: int) -> None:
        sample_ids = select(vlmlens_samples.c.id).where(vlmlens_samples.c.run_id == run_id)
        self._delete_samples(conn, list(conn.execute(sample_ids).scalars()))
        conn.execute(delete(vlmlens_runs).where(vlmlens_runs.c.id == run_id))

    def _delete_samples(self, conn: Connection, sample_ids: Sequence[int]) -> None:
        for id_chunk in chunks(sample_ids):
            owned = select(vlmlens_rows.c.tensor_id).where(vlmlens_rows.c.sample_id.in_(id_chunk))
            conn.execute(delete(tensors).where(tensors.c.id.in_(owned)))
            conn.execute(delete(vlmlens_rows).where(vlmlens_rows.c.sample_id.in_(id_chunk)))
            conn.execute(delete(vlmlens_samples).where(vlmlens_samples.c.id.in_(id_chunk)))

    def write_batch(
        self, run_id: int, samples: Sequence[SampleRecord], activations: Sequence[ActivationRecord]
    ) -> None:
        """Append one `tensors` row per activation, in the given order, in one transaction (rewritten sample
        keys replace their older rows)."""
        check_batch(samples, activations)
        if not samples:
            return
        by_key = {sample.key: sample for sample in samples}
        blobs = [tensor_blob(torch.as_tensor(record.tensor)) for record in activations]
        with self.sql_engine.begin() as conn:
            run = self._require_run(conn, run_id)
            tensor_rows = [
                self._tensor_row(run, by_key[record.sample_key], record, *blob)
                for record, blob in zip(activations, blobs, strict=True)
            ]
            self._replace_samples(conn, run_id, list(by_key))
            sample_ids = dict(
                conn.execute(
                    insert(vlmlens_samples).returning(vlmlens_samples.c.sample_key, vlmlens_samples.c.id),
                    [{"run_id": run_id, "sample_key": key} for key in by_key],
                ).all()
            )
            if not tensor_rows:
                return
            inserted = conn.execute(
                insert(tensors).returning(tensors.c.id, sort_by_parameter_order=True), tensor_rows
            ).scalars()
            ownership = [
                {"tensor_id": tensor_id, "sample_id": sample_ids[record.sample_key]}
                for tensor_id, record in zip(inserted, activations, strict=True)
            ]
            conn.execute(insert(vlmlens_rows), ownership)

    def _replace_samples(self, conn: Connection, run_id: int, keys: list[str]) -> None:
        for key_chunk in chunks(keys):
            query = select(vlmlens_samples.c.id).where(
                vlmlens_samples.c.run_id == run_id, vlmlens_samples.c.sample_key.in_(key_chunk)
            )
            self._delete_samples(conn, list(conn.execute(query).scalars()))

    @staticmethod
    def _tensor_row(
        run: Mapping[str, Any], sample: SampleRecord, record: ActivationRecord, blob: bytes, tensor_dim: int
    ) -> dict[str, Any]:
        return {
            "name": run["model_path"] or run["name"],
            "architecture": run["architecture"] or DEFAULT_ARCHITECTURE,
            "image_path": sample.image_path,
            "image_id": sample.dataset_row_id,
            "prompt": sample.prompt,
            "label": sample.label,
            "layer": layer_name(record.module, record.io),
            "pooling_method": None if record.pooling in (None, "none") else record.pooling,  # VLM-Lens: NULL
            "tensor_dim": tensor_dim,
            "tensor": blob,
        }
