"""`coglens export DB OUT`: write a lens run's activations to .npz, .safetensors or .parquet."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from ._options import check_output_file

DatabaseArg = Annotated[str, typer.Argument(help="Lens database: a SQLite file or a postgresql+psycopg:// URL.")]
EXPORT_SUFFIXES = (".npz", ".safetensors", ".parquet")  # coglens.lens.export.FORMATS_BY_SUFFIX


@contextmanager
def lens_errors_exit() -> Iterator[None]:
    """Print a storage error's message (it says what to fix) and exit 1, without a traceback."""
    from coglens.lens.errors import LensStoreError  # coglens.lens imports torch: not when the CLI is built

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
    if out.suffix.lower() not in EXPORT_SUFFIXES:
        raise typer.BadParameter(f"{str(out)!r}: end it with {', '.join(EXPORT_SUFFIXES)} to pick the format",
                                 param_hint="OUT")
    check_output_file(out, "OUT")
    check_database_exists(db)

    from coglens.lens.export import export

    with lens_errors_exit():
        written = export(db, out, run=run, modules=module or None)
    typer.echo(f"wrote {written}")


def check_database_exists(db: str) -> None:
    """A lens database given as a file path must exist (before coglens.lens loads; URLs are checked when
    connecting). Same words as coglens.lens.connection."""
    if "://" in db:
        return
    path = Path(db).expanduser().absolute()
    if path.is_dir():
        message = f"{path} is a directory; give a database file path such as {path / 'lens.db'}"
    elif not path.exists():
        message = f"no database at {path}: check the path (a lens run writes it first)"
    else:
        return
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)
