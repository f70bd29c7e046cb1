"""Read an intervention run back next to its clean run, sample by sample."""

from __future__ import annotations

import json
from typing import Any

from .layout import InterventionError
from .sources import _open


def effects(db: Any, module: str, *, run: str | int | None = None, io: str = "output", step: int = 0,
            as_: str = "numpy", stack: bool = True) -> tuple[Any, Any, Any]:
    """(clean, intervened, metadata) activations of ``module`` for every sample stored in both the intervention
    run ``run`` and the clean run it names, in the same sample order: ``intervened - clean`` is the effect.
    ``stack=False`` gives lists of per-sample arrays, for activations whose shapes differ between samples."""
    lens = _open(db)
    configs = {row["name"]: json.loads(row["config"] or "{}") for _, row in lens.runs().iterrows()}
    intervened_runs = [name for name, config in configs.items() if config.get("interventions")]
    if run is None and len(intervened_runs) != 1:
        raise InterventionError(f"{len(intervened_runs)} runs with interventions in this database "
                                f"({', '.join(intervened_runs) or 'none'}); pass run=NAME")
    name = lens.run_name(run if run is not None else intervened_runs[0])
    clean_run = configs[name].get("clean_run")
    if name not in intervened_runs or not clean_run:
        raise InterventionError(f"run {name!r} has no interventions (it was not made with an interventions: "
                                "section), so it has no clean run to compare with")
    _, meta = _read(lens, module, name, None, io, step, as_)
    _, clean_meta = _read(lens, module, clean_run, None, io, step, as_)
    keys = [key for key in meta["sample_key"] if key in set(clean_meta["sample_key"])]
    if not keys:
        raise InterventionError(f"runs {name!r} and {clean_run!r} share no sample with {module} ({io}, step {step})")
    if stack:
        intervened, meta = lens.activations(module, run=name, samples=keys, io=io, step=step, as_=as_)
        clean, _ = lens.activations(module, run=clean_run, samples=keys, io=io, step=step, as_=as_)
        return clean, intervened, meta
    intervened, meta = _read(lens, module, name, keys, io, step, as_)
    clean, _ = _read(lens, module, clean_run, keys, io, step, as_)
    return clean, intervened, meta


def _read(lens: Any, module: str, run: str, keys: list[str] | None, io: str, step: int,
          as_: str) -> tuple[list[Any], Any]:
    """Every stored sample's array (a list: shapes may differ) and the metadata table, in storage or ``keys``
    order."""
    import pandas as pd

    arrays: list[Any] = []
    tables = []
    for chunk, table in lens.iter_activations(module, run=run, samples=keys, io=io, step=step, as_=as_,
                                              stack=False):
        arrays += chunk
        tables.append(table)
    return arrays, pd.concat(tables, ignore_index=True) if tables else pd.DataFrame({"sample_key": []})
