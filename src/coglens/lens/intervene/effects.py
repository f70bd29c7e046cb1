"""Read an intervention run back next to its clean run, sample by sample."""

from __future__ import annotations

import json
from typing import Any

from .layout import InterventionError
from .sources import _open


def effects(db: Any, module: str, *, run: str | int | None = None, io: str = "output", step: int = 0,
            as_: str = "numpy") -> tuple[Any, Any, Any]:
    """(clean, intervened, metadata) activations of ``module`` for every sample stored in both the intervention
    run ``run`` and the clean run it names, in the same sample order: ``intervened - clean`` is the effect."""
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
    _, meta = lens.activations(module, run=name, io=io, step=step)
    _, clean_meta = lens.activations(module, run=clean_run, io=io, step=step)
    keys = [key for key in meta["sample_key"] if key in set(clean_meta["sample_key"])]
    if not keys:
        raise InterventionError(f"runs {name!r} and {clean_run!r} share no sample with {module} ({io}, step {step})")
    intervened, meta = lens.activations(module, run=name, samples=keys, io=io, step=step, as_=as_)
    clean, _ = lens.activations(module, run=clean_run, samples=keys, io=io, step=step, as_=as_)
    return clean, intervened, meta
