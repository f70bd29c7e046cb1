"""`coglens merge OUT SHARD...`: combine lens databases (e.g. per-rank shards of one run) into one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coglens.cli.export import lens_errors_exit
from coglens.lens.merge import merge_databases


def merge_command(
    out: Annotated[Path, typer.Argument(help="Database to merge into (created if missing).")],
    shards: Annotated[list[str], typer.Argument(help="Lens databases to merge (SQLite files or URLs).")],
) -> None:
    """Merge runs by name; samples already present (same key) are skipped."""
    with lens_errors_exit():
        report = merge_databases(shards, out)
    for run, added in report.added.items():
        typer.echo(f"{run}: {added} samples added, {report.skipped[run]} already present")
