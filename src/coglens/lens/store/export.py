"""Export one run's activations to files other tools read without CogLens: .npz, .safetensors, .parquet.

npz and safetensors hold one array per (module, io, step), stacked over samples, named by `array_name`
(`lm_head`, `model.layers.3:input`, `lm_head@step2`); the sample keys (and labels) of each array's rows sit beside
it: npz entries `__sample_keys__/<name>` and `__labels__/<name>`, safetensors metadata `sample_keys` and `labels`
(JSON objects keyed by array name). Parquet holds one row per activation (long format, any shapes), streamed.
safetensors keeps bfloat16; npz and parquet hold it as float32 (numpy has no bfloat16).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from coglens.lens.store.errors import ActivationNotFoundError, FormatError
from coglens.lens.store.formats import EXPORT_FORMATS
from coglens.lens.store.reader import LensDB

EXPORT_FORMAT_TAG = "coglens-lens-export"


def array_name(module: str, io: str, step: int) -> str:
    """The exported name of one (module, io, step): the module name, plus `:input` and `@step<n>` if not default."""
    return module + (":input" if io == "input" else "") + (f"@step{step}" if step else "")


def export_format(out_path: str | os.PathLike[str], format: str | None = None) -> str:
    """`format` if given, else inferred from the suffix of `out_path`."""
    if format is None:
        suffix = Path(out_path).suffix.lower()
        if suffix not in EXPORT_FORMATS:
            raise FormatError(
                f"cannot tell the export format of {os.fspath(out_path)!r}; end it with "
                f"{', '.join(EXPORT_FORMATS)} or pass format="
            )
        return EXPORT_FORMATS[suffix]
    if format not in EXPORT_FORMATS.values():
        raise FormatError(
            f"export format {format!r} is not supported; use one of {', '.join(EXPORT_FORMATS.values())}"
        )
    return format


def export(
    db: LensDB | str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    run: str | int | None = None,
    modules: Sequence[str] | None = None,
    format: str | None = None,
) -> Path:
    """Write the activations of `run` (the only run if None), every module or only `modules`, to `out_path`."""
    fmt = export_format(out_path, format)
    reader = db if isinstance(db, LensDB) else LensDB(db)
    try:
        run_name = reader.run_name(run)
        parts = _parts(reader, run_name, modules)
        out = Path(out_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        FILE_WRITERS[fmt](reader, run_name, parts, out)
        return out
    finally:
        if reader is not db:
            reader.close()


def _records(frame: Any) -> list[dict[str, Any]]:
    """A reader table as dicts, pandas' missing values (NaN in string columns) back to None."""
    if isinstance(frame, list):
        return frame
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def _parts(reader: LensDB, run: str, modules: Sequence[str] | None) -> list[dict[str, Any]]:
    """The (module, io, step) combinations of the run to export."""
    parts = _records(reader.contents(run))
    if not parts:
        raise ActivationNotFoundError(f"run {run!r} has no activations to export")
    if modules is None:
        return parts
    unknown = sorted(set(modules) - {part["module"] for part in parts})
    if unknown:
        raise ActivationNotFoundError(
            f"run {run!r} has no activations of module(s) {', '.join(map(repr, unknown))}; "
            f"stored: {', '.join(reader.modules(run))}"
        )
    return [part for part in parts if part["module"] in set(modules)]


def _row_info(metadata: Any) -> tuple[list[str], list[str]]:
    rows = _records(metadata)
    return [row["sample_key"] for row in rows], ["" if row["label"] is None else row["label"] for row in rows]


def _write_npz(reader: LensDB, run: str, parts: list[dict[str, Any]], out: Path) -> None:
    arrays: dict[str, np.ndarray] = {}
    for part in parts:
        name = array_name(part["module"], part["io"], part["step"])
        array, metadata = reader.activations(part["module"], run=run, io=part["io"], step=part["step"])
        keys, labels = _row_info(metadata)
        arrays[name] = array
        arrays[f"__sample_keys__/{name}"] = np.array(keys, dtype=str)
        arrays[f"__labels__/{name}"] = np.array(labels, dtype=str)
    with out.open("wb") as file:  # a file object: np.savez would append ".npz" to a path without it
        np.savez(file, **arrays)


def _write_safetensors(reader: LensDB, run: str, parts: list[dict[str, Any]], out: Path) -> None:
    from safetensors.torch import save_file

    tensors, sample_keys, labels = {}, {}, {}
    for part in parts:
        name = array_name(part["module"], part["io"], part["step"])
        tensor, metadata = reader.activations(part["module"], run=run, io=part["io"], step=part["step"], as_="torch")
        tensors[name] = tensor.contiguous()
        sample_keys[name], labels[name] = _row_info(metadata)
    header = {
        "format": EXPORT_FORMAT_TAG,
        "run": run,
        "sample_keys": json.dumps(sample_keys),
        "labels": json.dumps(labels),
    }
    save_file(tensors, str(out), metadata=header)


def _parquet_batches(reader: LensDB, run: str, parts: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Column dicts of at most 256 activations each, values flattened (shapes may differ between rows)."""
    for part in parts:
        module, io, step = part["module"], part["io"], part["step"]
        for arrays, metadata in reader.iter_activations(module, run=run, io=io, step=step, stack=False):
            rows = _records(metadata)
            yield {
                "run": [run] * len(rows),
                "sample_key": [row["sample_key"] for row in rows],
                "label": [row["label"] for row in rows],
                "module": [module] * len(rows),
                "io": [io] * len(rows),
                "step": [step] * len(rows),
                "selection": [row["selection"] for row in rows],
                "pooling": [row["pooling"] for row in rows],
                "dtype": [row["dtype"] for row in rows],
                "shape": [list(row["shape"]) for row in rows],
                "values": [array.reshape(-1) for array in arrays],
            }


def _write_parquet(reader: LensDB, run: str, parts: list[dict[str, Any]], out: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {name: pa.string() for name in ("run", "sample_key", "label", "module", "io", "selection", "pooling")}
    types.update(step=pa.int64(), dtype=pa.string(), shape=pa.list_(pa.int64()))
    writer = None
    try:
        for batch in _parquet_batches(reader, run, parts):
            values = batch.pop("values")
            offsets = np.concatenate([[0], np.cumsum([len(row) for row in values])]).astype(np.int64)
            columns = {name: pa.array(column, type=types[name]) for name, column in batch.items()}
            columns["values"] = pa.LargeListArray.from_arrays(offsets, pa.array(np.concatenate(values)))
            chunk = pa.table(columns)
            if writer is None:
                writer = pq.ParquetWriter(str(out), chunk.schema)
            elif chunk.schema.field("values").type != writer.schema.field("values").type:
                raise FormatError(
                    f"parquet holds one element type per column: {batch['module'][0]!r} has "
                    f"{chunk.schema.field('values').type.value_type}, earlier modules "
                    f"{writer.schema.field('values').type.value_type}; export them separately with modules="
                )
            writer.write_table(chunk)
    finally:
        if writer is not None:
            writer.close()


FILE_WRITERS = {"npz": _write_npz, "safetensors": _write_safetensors, "parquet": _write_parquet}
