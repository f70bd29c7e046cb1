"""How the lens commands (extract, export, merge) fail: one ``error:`` line and exit code 1, never a traceback.

Imported to build the ``coglens`` command, so it stays light: the lens (torch) loads only inside the handler.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer


@contextmanager
def lens_errors_exit() -> Iterator[None]:
    """Print a storage error's message (it says what to fix) and exit 1, without a traceback (a run stopped by a
    signal exits 130 or 143, as the shell expects)."""
    # coglens.lens imports torch: not when the CLI is built
    from coglens.lens.store.errors import LensStoreError, RunStoppedError

    try:
        yield
    except LensStoreError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(error.exit_code if isinstance(error, RunStoppedError) else 1) from None


def check_database_exists(db: str) -> None:
    """A lens database given as a file path must exist (before coglens.lens loads; URLs are checked when
    connecting). Same words as coglens.lens.store.connection."""
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
