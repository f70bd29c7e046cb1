"""``coglens probe DB``: a probe per module on a lens run's stored activations, for the samples' labels:
cross-validated accuracy next to a shuffled-label control task, a permutation test and the majority class."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from coglens.lens.capture.choices import IO_VALUES

from ._errors import check_database_exists, lens_errors_exit
from ._options import check_output_file
from .export import DatabaseArg

if TYPE_CHECKING:
    from rich.table import Table

    from coglens.lens.interpret.probes import ProbeResult

# The names of coglens.lens.interpret.probes (PROBE_KINDS, POOLS), which loads scikit-learn: not to build the CLI.
ProbeKind = Literal["linear", "mlp"]
Pool = Literal["mean", "last", "first"]
_PIPED_WIDTH = 200  # rich wraps at 80 columns when not on a terminal


def _check_io(values: list[str] | None) -> list[str] | None:
    for value in values or ():
        if value not in IO_VALUES:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(IO_VALUES)}")
    return values


def probe(
    db: DatabaseArg,
    run: Annotated[str | None, typer.Option("--run", help="Run name (default: the only run).")] = None,
    module: Annotated[
        list[str] | None,
        typer.Option("--module", help="Module to probe; repeat for several (default: every module, in the order "
                     "the model ran them)."),
    ] = None,
    probe_kind: Annotated[
        ProbeKind, typer.Option("--probe", help="linear: logistic regression; mlp: one hidden layer of 128.")
    ] = "linear",
    folds: Annotated[int, typer.Option("--folds", min=2, help="Stratified cross-validation folds.")] = 5,
    permutations: Annotated[
        int, typer.Option("--permutations", min=0, help="Label shuffles of the permutation test (0: no test).")
    ] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the folds, the control task and the shuffles.")] = 0,
    pool: Annotated[
        Pool | None,
        typer.Option("--pool", help=r"How stored \[tokens, hidden] activations become one vector per sample "
                     "(a single token needs none)."),  # \[: not rich markup
    ] = None,
    io: Annotated[
        list[str] | None,
        typer.Option("--io", callback=_check_io, help="Module output or input; repeat for both (default: output)."),
    ] = None,
    step: Annotated[
        list[int] | None,
        typer.Option("--step", min=0, help="Generation step (0: the prompt); repeat for several (default: 0)."),
    ] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="PNG of accuracy and control per module.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="JSON file of every result, folds included.")] = None,
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="Processes for the permutation test.")] = 1,
) -> None:
    """Train a probe per module for the samples' labels: is a label readable from the activations, beyond chance
    and beyond what the probe memorises?"""
    if plot is not None and plot.suffix.lower() != ".png":
        raise typer.BadParameter(f"{str(plot)!r} should be a .png file", param_hint="--plot")
    check_output_file(plot, "--plot")
    check_output_file(json_out, "--json")
    check_database_exists(db)
    try:
        from coglens.lens.interpret.probes import iter_probes, plot_probes

        if plot is not None:  # before the probes run, not after
            import matplotlib  # noqa: F401
    except ImportError as exc:  # scikit-learn and matplotlib come with the lens extra
        typer.echo(f"error: coglens probe needs scikit-learn and matplotlib ({exc}); pip install 'coglens[lens]'",
                   err=True)
        raise typer.Exit(1) from exc
    from rich.console import Console

    from coglens.lens import open as open_lens

    console = Console()
    if not console.is_terminal:
        console = Console(width=_PIPED_WIDTH)
    results = []
    with lens_errors_exit(), open_lens(db) as lens, Console(stderr=True).status("probing...") as status:
        run_name = lens.run_name(run)
        for result in iter_probes(lens, run=run_name, modules=module, ios=io or ("output",), steps=step or (0,),
                                  probe=probe_kind, folds=folds, permutations=permutations, seed=seed, pool=pool,
                                  n_jobs=jobs):
            results.append(result)
            status.update(f"probing... (done: {result.module}, accuracy {result.accuracy:.3f})")
    tested = f"p from {permutations} label permutations" if permutations else "no permutation test"
    console.print(f"{probe_kind} probes on run {run_name!r}: {folds}-fold cross-validation, control = the labels "
                  f"shuffled once, {tested}, seed {seed}", markup=False, highlight=False)
    console.print(_table(results))
    if plot is not None:
        typer.echo(f"wrote {plot_probes(results, plot)}", err=True)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        document = {"db": db, "run": run_name, "results": [asdict(result) for result in results]}
        json_out.write_text(json.dumps(document, indent=2) + "\n")
        typer.echo(f"wrote {json_out}", err=True)


def _table(results: list[ProbeResult]) -> Table:
    """One row per probe; io and step columns only when several were probed."""
    from rich.table import Table
    from rich.text import Text

    several = len({(result.io, result.step) for result in results}) > 1
    table = Table()
    table.add_column("module", no_wrap=True)  # a wrapped name cannot be copied into --module
    if several:
        table.add_column("io")
        table.add_column("step", justify="right")
    for name in ("accuracy", "control", "selectivity", "p-value", "baseline", "n"):
        table.add_column(name, justify="right")
    for result in results:
        where = [result.io, str(result.step)] if several else []
        table.add_row(
            Text(result.module),  # not markup: module names may hold brackets
            *where,
            f"{result.accuracy:.3f} ± {result.accuracy_std:.3f}",
            f"{result.control_accuracy:.3f} ± {result.control_std:.3f}",
            f"{result.selectivity:+.3f}",
            "-" if result.p_value is None else f"{result.p_value:.3g}",
            f"{result.baseline:.3f}",
            str(result.n_samples),
        )
    return table
