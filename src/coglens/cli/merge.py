"""`coglens merge OUT SHARD...`: combine lens databases (e.g. per-rank shards of one run) into one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._errors import check_database_exists, lens_errors_exit
from ._options import check_output_file


def merge_command(
    out: Annotated[Path, typer.Argument(help="Database to merge into (created if missing).")],
    shards: Annotated[list[str], typer.Argument(help="Lens databases to merge (SQLite files or URLs).")],
) -> None:
    """Merge runs by name; samples already present (same key) are skipped."""
    for shard in shards:
        check_database_exists(shard)
    if ":/" not in str(out):  # a database URL (which Path has made ':/') is checked when connecting
        check_output_file(out, "OUT")

    from coglens.lens.store.merge import merge_databases

    with lens_errors_exit():
        report = merge_databases(shards, out)
    for run, added in report.added.items():
        typer.echo(f"{run}: {added} samples added, {report.skipped[run]} already present")
