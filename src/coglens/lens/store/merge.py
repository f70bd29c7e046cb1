"""Merge lens databases (e.g. the per-rank SQLite shards of one multi-GPU run) into one.

Runs are matched by name (shards of one run become one run); samples are de-duplicated by key (the first
database holding a key wins). Rows are copied as stored, without decoding, a few samples per transaction.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update

from coglens.lens.store import schema
from coglens.lens.store.coglens_db import LensStore, insert_samples
from coglens.lens.store.connection import chunks, create_sql_engine, database_url
from coglens.lens.store.errors import LensDatabaseError
from coglens.lens.store.formats import COGLENS_FORMAT
from coglens.lens.store.resume import check_same_model

# A run's merged status: the first of these any part has, else "finished" (every part finished).
_STATUS_PRIORITY = ("failed", "interrupted", "running")


@dataclass
class MergeReport:
    """Per run name: samples copied into the destination, and samples skipped as already there."""

    added: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass
class _RunParts:
    dest_id: int
    model: dict[str, Any]  # model_path, model_config_hash of the destination run
    statuses: list[str]
    started: list[Any]
    finished: list[Any]


def merge_databases(
    sources: Sequence[str | os.PathLike[str]], dest: str | os.PathLike[str], *, samples_per_transaction: int = 32
) -> MergeReport:
    """Copy every run of `sources` into `dest` (created if missing; an existing lens database is added to)."""
    if not sources:
        raise LensDatabaseError("nothing to merge: give at least one source database")
    dest_url = database_url(dest)
    if any(database_url(source) == dest_url for source in sources):
        raise LensDatabaseError(f"{dest} is also a source; merge into a new database")
    # Open (and so validate) every source before writing anything.
    sql_engines = []
    try:
        for source in sources:
            sql_engine, name = create_sql_engine(source, create=False)
            sql_engines.append((sql_engine, name))
            schema.prepare_schema(sql_engine, name, fmt=COGLENS_FORMAT, tables=schema.metadata, create=False)
        with LensStore(dest) as store:
            return _merge(sql_engines, store, samples_per_transaction)
    finally:
        for sql_engine, _ in sql_engines:
            sql_engine.dispose()


def _merge(sources: list[tuple[Engine, str]], store: LensStore, samples_per_transaction: int) -> MergeReport:
    report = MergeReport()
    parts: dict[str, _RunParts] = {}
    for sql_engine, source_name in sources:
        with sql_engine.connect() as source:
            for run in source.execute(select(schema.runs).order_by(schema.runs.c.id)).mappings().all():
                if run["name"] not in parts:
                    with store.sql_engine.begin() as conn:
                        parts[run["name"]] = _dest_run(conn, run, store.name)
                part = parts[run["name"]]
                check_same_model(part.model, run, where=f"run {run['name']!r} of {source_name}")
                part.statuses.append(run["status"])
                part.started.append(schema.as_utc(run["started_at"]))
                part.finished.append(schema.as_utc(run["finished_at"]))
                added, skipped = _copy_samples(source, run["id"], store, part.dest_id, samples_per_transaction)
                report.added[run["name"]] = report.added.get(run["name"], 0) + added
                report.skipped[run["name"]] = report.skipped.get(run["name"], 0) + skipped
    with store.sql_engine.begin() as conn:
        for part in parts.values():
            conn.execute(update(schema.runs).where(schema.runs.c.id == part.dest_id).values(**_merged_times(part)))
    return report


def _dest_run(conn: Connection, run: Mapping[str, Any], dest_name: str) -> _RunParts:
    """The destination's run of that name, created as a copy of `run` if it has none."""
    found = conn.execute(select(schema.runs).where(schema.runs.c.name == run["name"])).mappings().first()
    if found is not None:
        model = {key: found[key] for key in ("model_path", "model_config_hash")}
        check_same_model(model, run, where=f"run {run['name']!r} of {dest_name}")
        times = [schema.as_utc(found["started_at"])], [schema.as_utc(found["finished_at"])]
        return _RunParts(found["id"], model, [found["status"]], *times)
    values = {key: value for key, value in run.items() if key != "id"}
    values.update(started_at=schema.as_utc(run["started_at"]), finished_at=schema.as_utc(run["finished_at"]))
    dest_id = conn.execute(insert(schema.runs).values(**values)).inserted_primary_key[0]
    return _RunParts(dest_id, {key: run[key] for key in ("model_path", "model_config_hash")}, [], [], [])


def _merged_times(part: _RunParts) -> dict[str, Any]:
    status = next((s for s in _STATUS_PRIORITY if s in part.statuses), "finished")
    finished = None if status == "running" or None in part.finished else max(part.finished)
    return {"status": status, "started_at": min(part.started), "finished_at": finished}


def _copy_samples(
    source: Connection, source_run_id: int, store: LensStore, dest_run_id: int, per_transaction: int
) -> tuple[int, int]:
    """Copy the run's samples missing from the destination run; returns (added, skipped)."""
    s, a = schema.samples, schema.activations
    with store.sql_engine.connect() as conn:
        present = set(conn.execute(select(s.c.sample_key).where(s.c.run_id == dest_run_id)).scalars())
    rows = source.execute(select(s).where(s.c.run_id == source_run_id).order_by(s.c.id)).mappings().all()
    missing = [row for row in rows if row["sample_key"] not in present]
    added = 0
    for chunk in chunks(missing, per_transaction):
        key_of = {row["id"]: row["sample_key"] for row in chunk}
        activation_rows: dict[str, list[dict[str, Any]]] = {key: [] for key in key_of.values()}
        for row in source.execute(select(a).where(a.c.sample_id.in_(list(key_of)))).mappings():
            copied = {key: value for key, value in row.items() if key not in ("id", "run_id", "sample_id")}
            activation_rows[key_of[row["sample_id"]]].append(copied)
        sample_rows = [{key: value for key, value in row.items() if key not in ("id", "run_id")} for row in chunk]
        with store.sql_engine.begin() as conn:
            added += insert_samples(conn, dest_run_id, sample_rows, activation_rows, existing="skip")
    return added, len(rows) - added
