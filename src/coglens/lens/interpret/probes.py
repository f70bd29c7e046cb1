"""Probes on stored lens activations: how well a module's activations predict the samples' labels, and whether
that says more about the module than about the probe.

Per (module, io, step): the stratified k-fold cross-validated accuracy of a probe (logistic regression, or a small
MLP) behind a standard scaler fitted on each fold's training split only (no leakage from the test split); a
control task in the spirit of Hewitt & Liang (2019), the same probe on the same folds with the labels shuffled
once, whose gap to the real accuracy is the selectivity (a probe that merely memorises scores well on both); a
permutation test, p = (k + 1) / (n + 1) with k of n label shuffles scoring at least the real accuracy; and the
majority-class baseline. Everything is seeded: the same seed gives the same numbers.

Needs scikit-learn (and matplotlib for the plot): ``pip install 'coglens[lens]'``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score, permutation_test_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sqlalchemy import func, select
from threadpoolctl import threadpool_limits

from coglens.lens.capture.choices import IO
from coglens.lens.store import schema
from coglens.lens.store.reader import LensDB

ProbeKind = Literal["linear", "mlp"]
PROBE_KINDS: tuple[str, ...] = get_args(ProbeKind)
Pool = Literal["mean", "last", "first"]  # how a stored token axis becomes one vector per sample
POOLS: tuple[str, ...] = get_args(Pool)
MLP_HIDDEN = 128  # one small hidden layer: a bigger probe learns the task itself and selectivity drops


class ProbeError(ValueError):
    """A probe that cannot be trained as asked (labels, classes, folds, activation shapes); the message says what
    to change."""


@dataclass(frozen=True)
class ProbeResult:
    """One probe of one (module, io, step). Accuracies are over the cross-validation folds (std: their standard
    deviation); `control_*` is the same probe on the same folds with the labels shuffled once."""

    module: str
    io: str
    step: int
    probe: str
    accuracy: float
    accuracy_std: float
    control_accuracy: float
    control_std: float
    selectivity: float  # accuracy - control_accuracy
    p_value: float | None  # permutation test; None when run with 0 permutations
    baseline: float  # share of the most frequent label: what always guessing it scores
    n_samples: int  # labelled samples probed
    n_classes: int
    n_features: int
    folds: int
    permutations: int
    seed: int
    pool: str | None  # how the token axis was reduced; None when the stored activations had none to reduce
    fold_accuracies: tuple[float, ...]
    control_fold_accuracies: tuple[float, ...]


def probe_modules(
    db: LensDB | str | os.PathLike[str],
    *,
    run: str | int | None = None,
    modules: Sequence[str] | None = None,
    ios: Sequence[IO] = ("output",),
    steps: Sequence[int] = (0,),
    probe: ProbeKind = "linear",
    folds: int = 5,
    permutations: int = 100,
    seed: int = 0,
    pool: Pool | None = None,
    n_jobs: int | None = None,
) -> list[ProbeResult]:
    """Probe each of `modules` (default: every module of the run, in the order the run stored them, which is the
    model's forward order) at each of `ios` and `steps` for the run's sample labels.

    Samples without a label are left out. Activations must be one vector per sample, or [tokens, hidden] with
    `pool` saying how to reduce the tokens (a single token needs no pool). `n_jobs` parallelises the permutations.
    """
    return list(iter_probes(db, run=run, modules=modules, ios=ios, steps=steps, probe=probe, folds=folds,
                            permutations=permutations, seed=seed, pool=pool, n_jobs=n_jobs))


def iter_probes(
    db: LensDB | str | os.PathLike[str],
    *,
    run: str | int | None = None,
    modules: Sequence[str] | None = None,
    ios: Sequence[IO] = ("output",),
    steps: Sequence[int] = (0,),
    probe: ProbeKind = "linear",
    folds: int = 5,
    permutations: int = 100,
    seed: int = 0,
    pool: Pool | None = None,
    n_jobs: int | None = None,
) -> Iterator[ProbeResult]:
    """`probe_modules`, one result at a time as each probe finishes (hundreds of fits each: show progress)."""
    if not isinstance(db, LensDB):
        with LensDB(db) as opened:
            yield from iter_probes(opened, run=run, modules=modules, ios=ios, steps=steps, probe=probe, folds=folds,
                                   permutations=permutations, seed=seed, pool=pool, n_jobs=n_jobs)
        return
    _check_settings(probe, folds, permutations, pool)
    run_name = db.run_name(run)
    for module, io, step in _targets(db, run_name, modules, ios, steps):
        x, labels, applied = load_features(db, module, run=run_name, io=io, step=step, pool=pool)
        yield probe_features(x, labels, module=module, io=io, step=step, probe=probe, folds=folds,
                             permutations=permutations, seed=seed, pool=applied, n_jobs=n_jobs)


def stored_activations(db: LensDB, run: str | int | None = None) -> list[tuple[str, str, int]]:
    """(module, io, step) of every kind of activation `run` stores, in the order each was first written: the
    order the model ran its modules in (vision tower, layer 0, 1, ..., 10, lm_head), not alphabetical."""
    a = schema.activations
    query = (
        select(a.c.module, a.c.io, a.c.step)
        .join(schema.runs, schema.runs.c.id == a.c.run_id)
        .where(schema.runs.c.name == db.run_name(run))
        .group_by(a.c.module, a.c.io, a.c.step)
        .order_by(func.min(a.c.id))
    )
    with db.sql_engine.connect() as conn:
        return [(row.module, row.io, row.step) for row in conn.execute(query)]


def _targets(
    db: LensDB, run: str, modules: Sequence[str] | None, ios: Sequence[str], steps: Sequence[int]
) -> list[tuple[str, str, int]]:
    """What to probe: the requested modules as given (a missing one fails when read, saying what is stored), or
    every stored module that has one of the requested (io, step)."""
    combos = list(dict.fromkeys(product(ios, steps)))
    if modules:
        return [(module, io, step) for module in dict.fromkeys(modules) for io, step in combos]
    stored = stored_activations(db, run)
    order = dict.fromkeys(module for module, _, _ in stored)
    targets = [(module, io, step) for module in order for io, step in combos if (module, io, step) in stored]
    if not targets:
        kinds = ", ".join(dict.fromkeys(f"io={io!r} step={step}" for _, io, step in stored)) or "nothing"
        asked = ", ".join(f"io={io!r} step={step}" for io, step in combos)
        raise ProbeError(f"run {run!r} stores no {asked} activations (it stores {kinds}): probe those instead "
                         "(--io, --step)")
    return targets


def load_features(
    db: LensDB,
    module: str,
    *,
    run: str | int | None = None,
    io: IO = "output",
    step: int = 0,
    pool: Pool | None = None,
) -> tuple[np.ndarray, list[str], str | None]:
    """(features [n_samples, n_features] float32, labels, the pool applied or None) of the labelled samples'
    stored `module` activations. Read sample by sample, so token axes of different lengths pool fine."""
    _check_settings(pool=pool)
    where = f"module {module!r} (io={io!r} step={step}) of run {db.run_name(run)!r}"
    vectors, labels, applied = [], [], None
    for values, meta in db.iter_activations(module, run=run, io=io, step=step, stack=False):
        for value, label, key in zip(values, meta["label"], meta["sample_key"], strict=True):
            if not isinstance(label, str):
                continue
            if value.ndim == 2:
                applied = pool
            vectors.append(_vector(value, pool, where, key))
            labels.append(label)
    if not labels:
        raise ProbeError(f"no sample of {where} has a label: give the inputs labels (a manifest's `label` field or "
                         "a dataset's `label` column) and extract again")
    sizes = {vector.shape[0] for vector in vectors}
    if len(sizes) > 1:
        raise ProbeError(f"{where} stores vectors of different sizes ({', '.join(map(str, sorted(sizes)))}) for "
                         "different samples; probe one size at a time")
    return np.stack(vectors).astype(np.float32, copy=False), labels, applied


def _vector(value: np.ndarray, pool: Pool | None, where: str, key: str) -> np.ndarray:
    """One sample's activation as one vector: [hidden] as is, [tokens, hidden] pooled over the tokens."""
    if value.ndim == 1:
        return value
    if value.ndim == 2 and pool is None and value.shape[0] == 1:
        return value[0]
    if value.ndim == 2 and pool is not None and value.shape[0] > 0:
        return value.mean(0) if pool == "mean" else value[0] if pool == "first" else value[-1]
    if value.ndim == 2 and value.shape[0] > 0:
        raise ProbeError(f"{where} stores [tokens, hidden] = {list(value.shape)} for sample {key!r}: pick how to "
                         f"reduce the tokens to one vector with pool = {' | '.join(POOLS)} (--pool)")
    raise ProbeError(f"{where} stores {list(value.shape)} for sample {key!r}; a probe takes one vector ([hidden]) "
                     "or [tokens, hidden] per sample: probe another module, or extract this one with pooling")


def probe_features(
    x: np.ndarray,
    labels: Sequence[str],
    *,
    module: str = "features",
    io: str = "output",
    step: int = 0,
    probe: ProbeKind = "linear",
    folds: int = 5,
    permutations: int = 100,
    seed: int = 0,
    pool: str | None = None,
    n_jobs: int | None = None,
) -> ProbeResult:
    """Probe `x` [n_samples, n_features] for `labels` (one per row); `module`, `io`, `step` and `pool` only name
    what `x` is in the result and in error messages."""
    where = f"module {module!r} (io={io!r} step={step})"
    y = np.asarray([str(label) for label in labels])
    _check_settings(probe, folds, permutations)
    classes, counts = _check_labels(x, y, folds, where)
    estimator = _estimator(probe, seed)
    # One set of folds, stratified on the real labels, for the probe, its control and every permutation.
    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y))
    control_y = np.random.default_rng(seed).permutation(y)
    p_value = None
    # Hundreds of small fits: BLAS threads cost more in wake-ups than they save (fits ran 8x slower with 2 threads
    # on a busy 2-core machine); n_jobs parallelises the permutations instead, one BLAS thread per worker.
    with threadpool_limits(limits=1, user_api="blas"):
        scores = cross_val_score(estimator, x, y, cv=splits)
        control = cross_val_score(estimator, x, control_y, cv=splits)
        if permutations:
            _, _, p_value = permutation_test_score(
                estimator, x, y, cv=splits, n_permutations=permutations, random_state=seed, n_jobs=n_jobs
            )
    return ProbeResult(
        module=module,
        io=io,
        step=step,
        probe=probe,
        accuracy=float(scores.mean()),
        accuracy_std=float(scores.std()),
        control_accuracy=float(control.mean()),
        control_std=float(control.std()),
        selectivity=float(scores.mean() - control.mean()),
        p_value=None if p_value is None else float(p_value),
        baseline=float(counts.max() / counts.sum()),
        n_samples=len(y),
        n_classes=len(classes),
        n_features=x.shape[1],
        folds=folds,
        permutations=permutations,
        seed=seed,
        pool=pool,
        fold_accuracies=tuple(float(score) for score in scores),
        control_fold_accuracies=tuple(float(score) for score in control),
    )


def _check_settings(
    probe: str | None = None, folds: int | None = None, permutations: int | None = None, pool: str | None = None
) -> None:
    """The probe's settings, those given, before any activation is read."""
    if probe is not None and probe not in PROBE_KINDS:
        raise ProbeError(f"probe {probe!r} is not one of {', '.join(PROBE_KINDS)}")
    if folds is not None and folds < 2:
        raise ProbeError(f"folds must be at least 2 for cross-validation, got {folds}")
    if permutations is not None and permutations < 0:
        raise ProbeError(f"permutations must be 0 (no permutation test) or more, got {permutations}")
    if pool is not None and pool not in POOLS:
        raise ProbeError(f"pool {pool!r} is not one of {', '.join(POOLS)}")


def _check_labels(x: np.ndarray, y: np.ndarray, folds: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The labels' classes and counts, once `x` and `y` can be cross-validated in `folds` stratified folds."""
    if x.ndim != 2 or len(x) != len(y):
        raise ProbeError(f"{where}: features must be [n_samples, n_features] with one label per sample, got "
                         f"{list(x.shape)} for {len(y)} labels")
    if not np.isfinite(x).all():
        raise ProbeError(f"{where} holds NaN or infinite values (e.g. float16 overflow): extract it in float32")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ProbeError(f"{where}: every labelled sample has the label {str(classes[0])!r}; a probe needs two "
                         "labels or more: extract samples of other labels too")
    rarest = int(counts.argmin())
    if counts[rarest] < folds:
        fix = f"use at most {counts[rarest]} folds (--folds) or " if counts[rarest] >= 2 else ""
        raise ProbeError(f"{where}: label {str(classes[rarest])!r} has {counts[rarest]} sample(s), fewer than the "
                         f"{folds} folds (each fold must hold every label): {fix}add samples of that label")
    return classes, counts


def _estimator(probe: str, seed: int) -> Pipeline:
    """The probe behind a scaler: cross-validation refits both on each training split, so the test split's
    statistics never reach the scaler."""
    if probe == "linear":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    # L-BFGS: full-batch, deterministic, and faster than Adam on the few hundred samples probes usually get.
    mlp = MLPClassifier(hidden_layer_sizes=(MLP_HIDDEN,), solver="lbfgs", max_iter=500, random_state=seed)
    return make_pipeline(StandardScaler(), mlp)


def plot_probes(results: Iterable[ProbeResult], path: str | os.PathLike[str]) -> Path:
    """Write a PNG of accuracy and control accuracy per module (in the results' order, with the folds' standard
    deviation as error bars) and the majority-class baseline; one pair of curves per (io, step)."""
    # The Agg canvas directly, not pyplot: no global backend switch in the caller's process (e.g. a notebook).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    results = list(results)
    if not results:
        raise ProbeError("no probe results to plot")
    modules = list(dict.fromkeys(result.module for result in results))
    groups = list(dict.fromkeys((result.io, result.step) for result in results))
    figure = Figure(figsize=(max(6.0, 0.45 * len(modules) + 2.5), 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for io, step in groups:
        rows = [result for result in results if (result.io, result.step) == (io, step)]
        where = [modules.index(result.module) for result in rows]
        suffix = f" ({io}, step {step})" if len(groups) > 1 else ""
        line = axes.errorbar(where, [r.accuracy for r in rows], yerr=[r.accuracy_std for r in rows], marker="o",
                             capsize=3, label=f"probe{suffix}")
        axes.errorbar(where, [r.control_accuracy for r in rows], yerr=[r.control_std for r in rows], marker="s",
                      capsize=3, linestyle="--", alpha=0.6, color=line.lines[0].get_color(),
                      label=f"control (shuffled labels){suffix}")
    baseline = {result.module: result.baseline for result in reversed(results)}  # the first result's per module
    axes.plot(range(len(modules)), [baseline[module] for module in modules], color="grey", linestyle=":",
              label="majority class")
    axes.set_xticks(range(len(modules)), modules, rotation=30, ha="right")
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("accuracy")
    first = results[0]
    axes.set_title(f"{first.probe} probe accuracy per module ({first.folds}-fold cross-validation)")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=120)
    return path
