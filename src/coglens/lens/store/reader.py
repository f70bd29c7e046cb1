"""Read a CogLens lens database back: runs, modules, samples, and activations stacked over samples."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from coglens.lens.capture.choices import IO
from coglens.lens.store import schema
from coglens.lens.store.codec import ArrayKind, decode
from coglens.lens.store.connection import chunks, create_sql_engine
from coglens.lens.store.errors import ActivationNotFoundError, ActivationShapeError, RunNotFoundError
from coglens.lens.store.formats import COGLENS_FORMAT
from coglens.lens.store.rows import decode_token_ids, decode_token_types

ACTIVATION_METADATA_COLUMNS = (
    "run",
    "sample_key",
    "label",
    "image_path",
    "prompt",
    "dataset_row_id",
    "selection",
    "pooling",
    "shape",
    "dtype",
)


def table(records: list[dict[str, Any]], columns: Sequence[str]):
    """A pandas DataFrame with `columns`, or the records themselves when pandas is not installed."""
    try:
        import pandas as pd  # optional (the `lens` extra), and slow to import: only when a table is made
    except ImportError:
        return records
    return pd.DataFrame.from_records(records, columns=list(columns))


@dataclass(frozen=True)
class _Run:
    id: int
    name: str


@dataclass(frozen=True)
class _Sample:
    id: int
    key: str
    label: str | None
    image_path: str | None
    prompt: str | None
    dataset_row_id: str | None


class LensDB:
    """A CogLens lens database opened for reading (a SQLite file path or a `postgresql+psycopg://` URL).
    Usable as a context manager; `close()` releases its connections.

    `run` arguments take a run name or id; `None` means every run for listings, and the only run for
    activations (an error names the runs when there are several).
    """

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.sql_engine, self.name = create_sql_engine(target, create=False)
        schema.prepare_schema(self.sql_engine, self.name, fmt=COGLENS_FORMAT, tables=schema.metadata, create=False)

    def __enter__(self) -> LensDB:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.sql_engine.dispose()

    def __repr__(self) -> str:
        return f"LensDB({self.name!r})"

    # -- listings ---------------------------------------------------------------------------------------------

    def runs(self):
        """One row per run: id, name, status, model, versions, times, sample count, config text."""
        counts = (
            select(schema.samples.c.run_id, func.count().label("num_samples"))
            .group_by(schema.samples.c.run_id)
            .subquery()
        )
        query = (
            select(schema.runs, func.coalesce(counts.c.num_samples, 0).label("num_samples"))
            .outerjoin(counts, counts.c.run_id == schema.runs.c.id)
            .order_by(schema.runs.c.id)
        )
        with self.sql_engine.connect() as conn:
            records = [dict(row) for row in conn.execute(query).mappings()]
        for record in records:
            record.update(
                started_at=schema.as_utc(record["started_at"]), finished_at=schema.as_utc(record["finished_at"])
            )
        return table(records, [*schema.runs.c.keys(), "num_samples"])

    def modules(self, run: str | int | None = None) -> list[str]:
        """Sorted names of the modules with stored activations (of `run`, or of every run)."""
        query = select(schema.activations.c.module).distinct().order_by(schema.activations.c.module)
        with self.sql_engine.connect() as conn:
            if run is not None:
                query = query.where(schema.activations.c.run_id == self._resolve_run(conn, run).id)
            return list(conn.execute(query).scalars())

    def contents(self, run: str | int | None = None):
        """One row per stored (run, module, io, step) with its number of samples: what `activations` can read."""
        a = schema.activations
        query = (
            select(schema.runs.c.name.label("run"), a.c.module, a.c.io, a.c.step, func.count().label("num_samples"))
            .join(schema.runs, schema.runs.c.id == a.c.run_id)
            .group_by(schema.runs.c.id, schema.runs.c.name, a.c.module, a.c.io, a.c.step)
            .order_by(schema.runs.c.id, a.c.module, a.c.io, a.c.step)
        )
        with self.sql_engine.connect() as conn:
            if run is not None:
                query = query.where(a.c.run_id == self._resolve_run(conn, run).id)
            records = [dict(row) for row in conn.execute(query).mappings()]
        return table(records, ["run", "module", "io", "step", "num_samples"])

    def run_name(self, run: str | int | None = None) -> str:
        """The name of `run` (a name or id), or of the only run when None."""
        with self.sql_engine.connect() as conn:
            return self._resolve_run(conn, run).name

    def samples(self, run: str | int | None = None):
        """One row per stored sample (of `run`, or of every run), token ids and types as numpy arrays."""
        s = schema.samples
        query = (
            select(schema.runs.c.name.label("run"), s)
            .join(schema.runs, schema.runs.c.id == s.c.run_id)
            .order_by(s.c.run_id, s.c.id)
        )
        with self.sql_engine.connect() as conn:
            if run is not None:
                query = query.where(s.c.run_id == self._resolve_run(conn, run).id)
            rows = conn.execute(query).mappings().all()
        records = []
        for row in rows:
            record = {"run": row["run"], **{k: v for k, v in row.items() if k not in ("id", "run_id", "run")}}
            record["key"] = record.pop("sample_key")
            record["input_ids"] = decode_token_ids(row["input_ids"])
            record["token_type_ids"] = decode_token_types(row["token_type_ids"])
            record["written_at"] = schema.as_utc(row["written_at"])
            records.append(record)
        columns = ["run", "key", *(c.key for c in s.c if c.key not in ("id", "run_id", "sample_key"))]
        return table(records, columns)

    # -- activations ------------------------------------------------------------------------------------------

    def activations(
        self,
        module: str,
        *,
        run: str | int | None = None,
        label: str | Sequence[str] | None = None,
        samples: Sequence[str] | None = None,
        io: IO = "output",
        step: int = 0,
        as_: ArrayKind = "numpy",
    ):
        """(array of shape (n_samples, *activation_shape), metadata table with one row per sample).

        Samples come in storage order, or in the order of `samples` (keys) when given; `label` keeps the
        samples with that label (or any of those labels). Without `samples`, samples lacking this (io, step)
        are left out (e.g. decoding steps after a sample's generation ended); requested ones must have it.
        numpy output upcasts bfloat16/float8 to float32.
        """
        with self.sql_engine.connect() as conn:
            query = self._query(conn, module, run, label, samples, io, step)
            rows = [row for chunk in query.row_chunks(conn, chunk_size=1024) for row in chunk]
        return query.build(rows, as_, stack=True, across_chunks=False)

    def iter_activations(
        self,
        module: str,
        *,
        run: str | int | None = None,
        label: str | Sequence[str] | None = None,
        samples: Sequence[str] | None = None,
        io: IO = "output",
        step: int = 0,
        as_: ArrayKind = "numpy",
        chunk_size: int = 256,
        stack: bool = True,
    ) -> Iterator[tuple[Any, Any]]:
        """Like `activations`, streamed as (array, metadata) chunks of at most `chunk_size` samples.

        `stack=False` yields a list of per-sample arrays instead of one array: for activations whose shapes
        differ between samples (e.g. whole sequences of different lengths).
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        with self.sql_engine.connect() as conn:
            query = self._query(conn, module, run, label, samples, io, step)
            for rows in query.row_chunks(conn, chunk_size=chunk_size):
                if rows:
                    yield query.build(rows, as_, stack=stack, across_chunks=True)

    def _query(
        self,
        conn: Connection,
        module: str,
        run: str | int | None,
        label: str | Sequence[str] | None,
        keys: Sequence[str] | None,
        io: str,
        step: int,
    ) -> _ActivationQuery:
        run_ = self._resolve_run(conn, run)
        template = self._template_row(conn, run_, module, io, step)
        selected = self._select_samples(conn, run_, label, keys)
        return _ActivationQuery(run_, module, io, step, template, selected, explicit=keys is not None)

    def _resolve_run(self, conn: Connection, run: str | int | None) -> _Run:
        names = dict(conn.execute(select(schema.runs.c.id, schema.runs.c.name).order_by(schema.runs.c.id)).all())
        if run is None:
            if len(names) == 1:
                return _Run(*next(iter(names.items())))
            if not names:
                raise RunNotFoundError(f"{self.name} holds no runs yet")
            raise RunNotFoundError(
                f"{self.name} holds {len(names)} runs ({', '.join(map(repr, names.values()))}); pass run=NAME"
            )
        for run_id, name in names.items():
            if run == name or (isinstance(run, int) and run == run_id):
                return _Run(run_id, name)
        close = difflib.get_close_matches(str(run), list(names.values()), n=3)
        raise RunNotFoundError(
            f"no run {run!r} in {self.name}; "
            + (
                f"did you mean {', '.join(map(repr, close))}?"
                if close
                else f"runs: {', '.join(map(repr, names.values()))}"
            )
        )

    def _template_row(self, conn: Connection, run: _Run, module: str, io: str, step: int) -> dict[str, Any]:
        """One stored row of (module, io, step), to learn its shape/dtype (even when no sample is selected)."""
        a = schema.activations
        query = select(a.c.shape, a.c.dtype).where(a.c.run_id == run.id, a.c.module == module)
        row = conn.execute(query.where(a.c.io == io, a.c.step == step).limit(1)).mappings().first()
        if row is not None:
            return dict(row)
        combos = conn.execute(
            select(a.c.io, a.c.step)
            .distinct()
            .where(a.c.run_id == run.id, a.c.module == module)
            .order_by(a.c.io, a.c.step)
        ).all()
        if combos:
            stored = ", ".join(f"io={c.io!r} step={c.step}" for c in combos[:10])
            raise ActivationNotFoundError(
                f"module {module!r} of run {run.name!r} has no io={io!r} step={step} activations; stored: {stored}"
            )
        modules = self.modules(run.id)
        close = difflib.get_close_matches(module, modules, n=3, cutoff=0.5)
        hint = (
            f"did you mean {', '.join(map(repr, close))}?"
            if close
            else f"{len(modules)} modules stored, see .modules()"
        )
        raise ActivationNotFoundError(f"no activations of module {module!r} in run {run.name!r}; {hint}")

    def _select_samples(
        self, conn: Connection, run: _Run, label: str | Sequence[str] | None, keys: Sequence[str] | None
    ) -> list[_Sample]:
        s = schema.samples
        query = select(s.c.id, s.c.sample_key, s.c.label, s.c.image_path, s.c.prompt, s.c.dataset_row_id).where(
            s.c.run_id == run.id
        )
        if label is not None:
            labels = [label] if isinstance(label, str) else list(label)
            query = query.where(s.c.label.in_([str(value) for value in labels]))
        if keys is None:
            return [_Sample(*row) for row in conn.execute(query.order_by(s.c.id))]
        keys = [str(key) for key in keys]
        found: dict[str, _Sample] = {}
        for key_chunk in chunks(keys):
            found.update(
                (row.sample_key, _Sample(*row)) for row in conn.execute(query.where(s.c.sample_key.in_(key_chunk)))
            )
        missing = [key for key in keys if key not in found]
        if missing:
            raise ActivationNotFoundError(
                f"{len(missing)} requested sample keys are not in run {run.name!r}"
                + (f" with label {label!r}" if label is not None else "")
                + f": {', '.join(map(repr, missing[:5]))}{', ...' if len(missing) > 5 else ''}"
            )
        return [found[key] for key in keys]


@dataclass
class _ActivationQuery:
    """The resolved selection of one activations read: fetches rows chunk by chunk and stacks them."""

    run: _Run
    module: str
    io: str
    step: int
    template: dict[str, Any]
    samples: list[_Sample]
    explicit: bool  # samples were requested by key: each must have this activation
    _reference: tuple[str, tuple[tuple[int, ...], str]] | None = None

    def row_chunks(self, conn: Connection, *, chunk_size: int) -> Iterator[list[tuple[_Sample, Any]]]:
        a = schema.activations
        base = select(a.c.sample_id, a.c.shape, a.c.dtype, a.c.selection, a.c.pooling, a.c.data).where(
            a.c.run_id == self.run.id, a.c.module == self.module, a.c.io == self.io, a.c.step == self.step
        )
        for sample_chunk in chunks(self.samples, min(chunk_size, 500)):
            by_id = {
                row.sample_id: row for row in conn.execute(base.where(a.c.sample_id.in_([s.id for s in sample_chunk])))
            }
            lacking = [sample.key for sample in sample_chunk if sample.id not in by_id]
            if lacking and self.explicit:
                raise ActivationNotFoundError(
                    f"requested samples {', '.join(map(repr, lacking[:5]))} have no activation of {self.module!r} "
                    f"(io={self.io!r} step={self.step}) in run {self.run.name!r}"
                )
            yield [(sample, by_id[sample.id]) for sample in sample_chunk if sample.id in by_id]

    def build(self, rows: list[tuple[_Sample, Any]], as_: ArrayKind, *, stack: bool, across_chunks: bool):
        """(decoded rows, metadata table): one stacked array, or a list of arrays when not `stack`.

        Stacking requires one shape and dtype; `across_chunks` holds every chunk to the first one's.
        """
        if stack:
            shape, dtype = self._common_signature(rows, across_chunks)
            values = decode(bytearray().join(row.data for _, row in rows), (len(rows), *shape), dtype, as_)
        else:
            values = [decode(row.data, row.shape, row.dtype, as_) for _, row in rows]
        metadata = [
            {
                "run": self.run.name,
                "sample_key": sample.key,
                "label": sample.label,
                "image_path": sample.image_path,
                "prompt": sample.prompt,
                "dataset_row_id": sample.dataset_row_id,
                "selection": row.selection,
                "pooling": row.pooling,
                "shape": tuple(row.shape),
                "dtype": row.dtype,
            }
            for sample, row in rows
        ]
        return values, table(metadata, ACTIVATION_METADATA_COLUMNS)

    def _common_signature(self, rows: list[tuple[_Sample, Any]], across_chunks: bool) -> tuple[tuple[int, ...], str]:
        reference = self._reference if across_chunks else None
        for sample, row in rows:
            signature = (tuple(row.shape), row.dtype)
            if reference is None:
                reference = (sample.key, signature)
            elif signature != reference[1]:
                raise ActivationShapeError(
                    f"activations of {self.module!r} (io={self.io!r} step={self.step}) in run {self.run.name!r} "
                    f"differ between samples: {list(reference[1][0])} {reference[1][1]} for {reference[0]!r}, "
                    f"{list(row.shape)} {row.dtype} for {sample.key!r}, so they cannot be stacked; extract them "
                    "with pooling (e.g. `pooling: mean`) or a fixed token selection (e.g. last), or read them "
                    "unstacked with iter_activations(..., stack=False)"
                )
        if across_chunks:
            self._reference = reference
        return reference[1] if reference else (tuple(self.template["shape"]), self.template["dtype"])


def open(target: str | os.PathLike[str]) -> LensDB:
    """Open a lens database for reading: a SQLite file path or a `postgresql+psycopg://` URL."""
    return LensDB(target)
