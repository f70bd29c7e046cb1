"""The one contract of every lens writer, whatever the output format: start or resume a run by name, write
batches, mark how the run ended, close.

`LensWriter` keeps the runs table for every format; a format stores samples its own way (`write_batch`) and
deletes a run's rows its own way (`_delete_run_rows`). Whether a run may be resumed is decided by
:mod:`coglens.lens.store.resume`, when the run is started.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from sqlalchemy import Connection, Table, insert, select, update
from sqlalchemy.exc import IntegrityError

import coglens
from coglens.lens.store.connection import create_sql_engine
from coglens.lens.store.errors import RunNotFoundError
from coglens.lens.store.records import ActivationRecord, SampleRecord
from coglens.lens.store.resume import check_resumable
from coglens.lens.store.schema import utc_now


def config_text(config: str | Mapping[str, Any] | None) -> str | None:
    """The config as given: text stays text (YAML comments included), a mapping becomes JSON."""
    if config is None or isinstance(config, str):
        return config
    return json.dumps(dict(config), sort_keys=True, default=str)


class LensWriter(ABC):
    """A lens database opened for writing (a SQLite file path or a database URL); a context manager.

    Subclasses set `runs` (a `schema.runs_table`) and `samples` (a table with `run_id` and `sample_key`).
    """

    runs: Table
    samples: Table

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.sql_engine, self.name = create_sql_engine(target, create=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.sql_engine.dispose()

    @abstractmethod
    def write_batch(
        self, run_id: int, samples: Sequence[SampleRecord], activations: Sequence[ActivationRecord]
    ) -> None:
        """Store `samples` with all their activations in one transaction (rewritten keys replace older rows), so
        that the samples a run holds are exactly the complete ones."""

    @abstractmethod
    def _delete_run_rows(self, conn: Connection, run_id: int) -> None:
        """Delete everything stored for the run, the run row included."""

    def start_run(
        self,
        name: str,
        config: str | Mapping[str, Any] | None = None,
        *,
        model_path: str | None = None,
        model_config_hash: str | None = None,
        architecture: str | None = None,
        overwrite: bool = False,
    ) -> int:
        """Create the run `name`, or resume it if it exists (`overwrite=True` deletes it first).

        Returns the run id. Resuming a run made with another model (path or config hash) raises
        `RunMismatchError`, with other capture settings `RunSettingsMismatchError`.
        """
        values = {
            "config": config_text(config),
            "model_path": model_path,
            "model_config_hash": model_config_hash,
            "architecture": architecture,
        }
        try:
            return self._start_run(name, values, overwrite=overwrite)
        except IntegrityError:
            # Another process (another rank on a shared PostgreSQL) created it between our lookup and insert.
            return self._start_run(name, values, overwrite=False)

    def _start_run(self, name: str, values: dict[str, Any], *, overwrite: bool) -> int:
        with self.sql_engine.begin() as conn:
            found = conn.execute(select(self.runs).where(self.runs.c.name == name)).mappings().first()
            if found is not None and overwrite:
                self._delete_run_rows(conn, found["id"])
                found = None
            if found is None:
                result = conn.execute(
                    insert(self.runs).values(
                        name=name,
                        **values,
                        coglens_version=coglens.__version__,
                        torch_version=torch.__version__,
                        started_at=utc_now(),
                        status="running",
                    )
                )
                return result.inserted_primary_key[0]
            check_resumable(found, values, where=f"run {name!r} in {self.name}")
            resumed = {"status": "running", "finished_at": None, "error": None}
            conn.execute(update(self.runs).where(self.runs.c.id == found["id"]).values(**resumed))
            return found["id"]

    def completed_sample_keys(self, run_id: int) -> set[str]:
        """Keys of every sample stored in the run (each complete, with all its activations)."""
        with self.sql_engine.connect() as conn:
            self._require_run(conn, run_id)
            query = select(self.samples.c.sample_key).where(self.samples.c.run_id == run_id)
            return set(conn.execute(query).scalars())

    def mark_finished(self, run_id: int) -> None:
        self._set_status(run_id, "finished")

    def mark_failed(self, run_id: int, error: str | None = None) -> None:
        self._set_status(run_id, "failed", error=error)

    def mark_interrupted(self, run_id: int) -> None:
        self._set_status(run_id, "interrupted")

    def _set_status(self, run_id: int, status: str, *, error: str | None = None) -> None:
        with self.sql_engine.begin() as conn:
            self._require_run(conn, run_id)
            ended = {"status": status, "finished_at": utc_now(), "error": error}
            conn.execute(update(self.runs).where(self.runs.c.id == run_id).values(**ended))

    def _require_run(self, conn: Connection, run_id: int) -> Mapping[str, Any]:
        found = conn.execute(select(self.runs).where(self.runs.c.id == run_id)).mappings().first()
        if found is None:
            raise RunNotFoundError(f"no run with id {run_id} in {self.name}; call start_run() first")
        return found
