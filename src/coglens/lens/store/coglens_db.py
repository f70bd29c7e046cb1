"""Write lens runs into a CogLens database: runs, samples, activations, in batched transactions.

A batch is one transaction: every sample of it is stored with all its activations, or nothing of it is, so a
crash never leaves a half-written sample and `completed_sample_keys` is exactly what a resume can skip.
Rows go in with one executemany per table (SQLAlchemy Core insert of a list of dicts).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from sqlalchemy import Connection, delete, insert, select

from coglens.lens.store.connection import chunks
from coglens.lens.store.formats import COGLENS_FORMAT
from coglens.lens.store.records import ActivationRecord, SampleRecord
from coglens.lens.store.rows import activation_rows_by_sample, sample_row
from coglens.lens.store.schema import activations, metadata, prepare_schema, runs, samples, utc_now
from coglens.lens.store.writer import LensWriter


def delete_run_rows(conn: Connection, run_id: int) -> None:
    conn.execute(delete(activations).where(activations.c.run_id == run_id))
    conn.execute(delete(samples).where(samples.c.run_id == run_id))
    conn.execute(delete(runs).where(runs.c.id == run_id))


def insert_samples(
    conn: Connection,
    run_id: int,
    sample_rows: Sequence[dict[str, Any]],
    activation_rows: Mapping[str, Sequence[dict[str, Any]]],
    *,
    existing: Literal["replace", "skip"],
) -> int:
    """Insert samples with their activations (rows keyed by sample key) inside the caller's transaction.

    Keys already stored in the run are replaced (a rewrite never duplicates) or skipped (merging shards).
    Returns the number of samples inserted.
    """
    keys = [row["sample_key"] for row in sample_rows]
    stored: dict[str, int] = {}
    for key_chunk in chunks(keys):
        query = select(samples.c.sample_key, samples.c.id).where(
            samples.c.run_id == run_id, samples.c.sample_key.in_(key_chunk)
        )
        stored.update(conn.execute(query).all())
    if existing == "replace" and stored:
        for id_chunk in chunks(list(stored.values())):
            conn.execute(delete(activations).where(activations.c.sample_id.in_(id_chunk)))
            conn.execute(delete(samples).where(samples.c.id.in_(id_chunk)))
    new_rows = [row for row in sample_rows if existing == "replace" or row["sample_key"] not in stored]
    if not new_rows:
        return 0
    inserted = conn.execute(
        insert(samples).returning(samples.c.sample_key, samples.c.id),
        [{**row, "run_id": run_id} for row in new_rows],
    )
    activation_params = [
        {**row, "run_id": run_id, "sample_id": sample_id}
        for key, sample_id in inserted.all()
        for row in activation_rows.get(key, ())
    ]
    if activation_params:
        conn.execute(insert(activations), activation_params)
    return len(new_rows)


class LensStore(LensWriter):
    """A CogLens lens database opened for writing: a SQLite file path or a `postgresql+psycopg://` URL.

    >>> with LensStore("out/lens.db") as store:
    ...     run_id = store.start_run("colors", config_yaml, model_path="THUDM/cogvlm-chat-hf")
    ...     store.write_batch(run_id, samples=[SampleRecord("img1", "Describe it.")],
    ...                       activations=[ActivationRecord("img1", "lm_head", logits)])
    ...     store.mark_finished(run_id)
    """

    runs = runs
    samples = samples

    def __init__(self, target: str | os.PathLike[str]) -> None:
        super().__init__(target)
        prepare_schema(self.sql_engine, self.name, fmt=COGLENS_FORMAT, tables=metadata, create=True)

    def _delete_run_rows(self, conn: Connection, run_id: int) -> None:
        delete_run_rows(conn, run_id)

    def write_batch(
        self, run_id: int, samples: Sequence[SampleRecord], activations: Sequence[ActivationRecord]
    ) -> None:
        """Store `samples` and their `activations` in one transaction (rewritten keys replace older rows)."""
        written_at = utc_now()
        activation_rows = activation_rows_by_sample(samples, activations)
        sample_rows = [sample_row(record, written_at) for record in samples]
        with self.sql_engine.begin() as conn:
            self._require_run(conn, run_id)
            insert_samples(conn, run_id, sample_rows, activation_rows, existing="replace")
