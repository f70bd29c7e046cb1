"""What a lens run shows: a progress bar while it runs (samples/s, rows/s, ETA) and a summary at the end."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text
from tqdm import tqdm

from coglens.lens.run.batches import SampleFailure

_MAX_FAILURES_SHOWN = 20


class Progress:
    """A tqdm bar over the samples still to extract; `disable` for quiet runs and non-zero ranks."""

    def __init__(self, total: int, *, disable: bool = False, description: str = "extract") -> None:
        self._bar = tqdm(
            total=total, unit="sample", desc=description, disable=disable, dynamic_ncols=True, file=sys.stderr
        )
        self._rows = 0
        self._start = time.perf_counter()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()

    def advance(self, samples: int, rows: int) -> None:
        self._rows += rows
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        self._bar.set_postfix_str(f"{self._rows} rows, {self._rows / elapsed:.1f} rows/s", refresh=False)
        self._bar.update(samples)

    def note(self, message: str) -> None:
        """A line above the bar (e.g. a skipped image)."""
        self._bar.write(message, file=sys.stderr)


@dataclass
class LensSummary:
    """The outcome of one lens run (of one rank, or of all ranks combined)."""

    run_name: str
    output: str  # the database (or, for a sharded run, the shards) in words
    output_format: str
    samples_total: int  # inputs of this run (this rank's share)
    samples_written: int
    samples_resumed: int  # already stored by an earlier, interrupted run: skipped
    failures: list[SampleFailure] = field(default_factory=list)
    rows: int = 0
    nbytes: int = 0
    seconds: float = 0.0
    load_seconds: float = 0.0
    modules: list[str] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)  # per-rank SQLite files that `coglens merge` combines

    @classmethod
    def combine(cls, parts: Sequence[LensSummary]) -> LensSummary:
        """One summary of every rank's (the slowest rank's time)."""
        first = parts[0]
        shards = [shard for part in parts for shard in part.shards]
        return cls(
            run_name=first.run_name,
            output=", ".join(shards) if shards else first.output,
            output_format=first.output_format,
            samples_total=sum(p.samples_total for p in parts),
            samples_written=sum(p.samples_written for p in parts),
            samples_resumed=sum(p.samples_resumed for p in parts),
            failures=[f for p in parts for f in p.failures],
            rows=sum(p.rows for p in parts),
            nbytes=sum(p.nbytes for p in parts),
            seconds=max(p.seconds for p in parts),
            load_seconds=max(p.load_seconds for p in parts),
            modules=first.modules,
            shards=shards,
        )


def _size(nbytes: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    power = 0
    while nbytes >= 1024 and power < len(units) - 1:
        nbytes /= 1024
        power += 1
    return f"{nbytes:.0f} B" if power == 0 else f"{nbytes:.1f} {units[power]}"


def read_back_hint(summary: LensSummary) -> str:
    """One line that says how to read the stored activations back."""
    if summary.shards:
        return f"combine the shards: coglens merge MERGED.db {' '.join(summary.shards)}"
    if summary.output_format == "vlm-lens":
        return (
            f"read back: SELECT layer, tensor FROM tensors in {summary.output}, then "
            "torch.load(io.BytesIO(tensor), weights_only=True)"
        )
    module = summary.modules[0] if summary.modules else "MODULE"
    return (
        f'read back: coglens.lens.open("{summary.output}").activations("{module}", run="{summary.run_name}")'
    )


def render_summary(summary: LensSummary) -> Group:
    """The end-of-run table, the skipped samples (if any) and the read-back hint."""
    table = Table(title=f"lens run {summary.run_name!r}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rate = summary.samples_written / summary.seconds if summary.seconds else 0.0
    stored = f"{summary.samples_written} new"
    if summary.samples_resumed:
        stored += f", {summary.samples_resumed} already stored (resumed)"
    table.add_row("samples", f"{stored} of {summary.samples_total}")
    if summary.failures:
        table.add_row("skipped", f"{len(summary.failures)} unreadable (listed below)")
    table.add_row("rows", f"{summary.rows:,}")
    table.add_row("bytes", f"{_size(summary.nbytes)} of activations")
    table.add_row(
        "seconds", f"{summary.seconds:.2f} ({rate:.1f} samples/s; model load {summary.load_seconds:.1f})"
    )
    table.add_row("modules", "\n".join(summary.modules))
    table.add_row("database", f"{summary.output} ({summary.output_format} format)")
    parts: list = [table]
    for failure in summary.failures[:_MAX_FAILURES_SHOWN]:
        parts.append(Text(f"skipped {failure.key} ({failure.source}): {failure.reason}", style="yellow"))
    if len(summary.failures) > _MAX_FAILURES_SHOWN:
        parts.append(
            Text(f"... and {len(summary.failures) - _MAX_FAILURES_SHOWN} more skipped", style="yellow")
        )
    parts.append(Text(read_back_hint(summary)))
    return Group(*parts)


def print_summary(summary: LensSummary, console: Console | None = None) -> None:
    (console or Console(soft_wrap=True)).print(render_summary(summary))
