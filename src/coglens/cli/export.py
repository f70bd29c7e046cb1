"""`coglens export DB OUT`: write a lens run's activations to .npz, .safetensors or .parquet."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from coglens.lens.errors import LensStoreError
from coglens.lens.export import export

DatabaseArg = Annotated[str, typer.Argument(help="Lens database: a SQLite file or a postgresql+psycopg:// URL.")]


@contextmanager
def lens_errors_exit() -> Iterator[None]:
    """Print a storage error's message (it says what to fix) and exit 1, without a traceback."""
    try:
        yield
    except LensStoreError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None


def export_command(
    db: DatabaseArg,
    out: Annotated[Path, typer.Argument(help="Output file; its suffix picks the format: .npz .safetensors .parquet.")],
    run: Annotated[str | None, typer.Option("--run", help="Run name (default: the only run).")] = None,
    module: Annotated[
        list[str] | None,
        typer.Option("--module", help="Module to export; repeat for several (default: all)."),
    ] = None,
) -> None:
    """Export one run's activations, stacked over samples, for numpy / safetensors / pyarrow users."""
    with lens_errors_exit():
        written = export(db, out, run=run, modules=module or None)
    typer.echo(f"wrote {written}")
