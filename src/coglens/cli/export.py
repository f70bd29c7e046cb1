"""`coglens export DB OUT`: write a lens run's activations to .npz, .safetensors or .parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coglens.lens.store.formats import EXPORT_FORMATS

from ._errors import check_database_exists, lens_errors_exit
from ._options import check_output_file

DatabaseArg = Annotated[str, typer.Argument(help="Lens database: a SQLite file or a postgresql+psycopg:// URL.")]


def export_command(
    db: DatabaseArg,
    out: Annotated[Path, typer.Argument(help=f"Output file; its suffix picks the format: {' '.join(EXPORT_FORMATS)}.")],
    run: Annotated[str | None, typer.Option("--run", help="Run name (default: the only run).")] = None,
    module: Annotated[
        list[str] | None,
        typer.Option("--module", help="Module to export; repeat for several (default: all)."),
    ] = None,
) -> None:
    """Export one run's activations, stacked over samples, for numpy / safetensors / pyarrow users."""
    if out.suffix.lower() not in EXPORT_FORMATS:
        raise typer.BadParameter(f"{str(out)!r}: end it with {', '.join(EXPORT_FORMATS)} to pick the format",
                                 param_hint="OUT")
    check_output_file(out, "OUT")
    check_database_exists(db)

    from coglens.lens.store.export import export

    with lens_errors_exit():
        written = export(db, out, run=run, modules=module or None)
    typer.echo(f"wrote {written}")

