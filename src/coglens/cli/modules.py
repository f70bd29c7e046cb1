"""``coglens modules``: every module name of a model, with its class, parameters and what it returns."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import DeviceOpt, DtypeOpt, ModelOpt, TokenizerOpt, check_dtype, check_output_dir

_PIPED_WIDTH = 240  # rich wraps at 80 columns when not on a terminal; shapes would wrap mid-word


def modules(
    model: ModelOpt = None,
    tokenizer: TokenizerOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    match: Annotated[
        list[str] | None,
        typer.Option(
            "--match", help="Only modules these patterns select (as in a config's modules:); repeatable."
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run/--no-dry-run", help="Run one synthetic image + prompt to show each output."),
    ] = True,
    log: Annotated[
        bool, typer.Option("--log", help="Also write logs/<model>.txt (VLM-Lens's module list).")
    ] = False,
    logs_dir: Annotated[Path, typer.Option("--logs-dir", help="Folder of the --log file.")] = Path("logs"),
) -> None:
    """List module names to put in a lens config's `modules:`."""
    check_dtype(dtype)
    if log:
        check_output_dir(logs_dir, "--logs-dir")

    from rich.console import Console

    from coglens.lens.capture.modules import module_table, resolve_modules
    from coglens.lens.run.discovery import list_modules, write_module_log
    from coglens.pipeline import DEFAULT_TINY_MODEL, Pipeline
    from coglens.processing import CogvlmProcessor

    pipe = Pipeline.load(model, tokenizer=tokenizer, dtype=dtype, device=device)
    selected = None if not match else {spec.name for spec in resolve_modules(pipe.model, match)}
    processor = CogvlmProcessor(pipe.tokenizer, pipe.config) if dry_run else None
    infos = list_modules(pipe.model, processor)
    shown = infos if selected is None else [info for info in infos if info.name in selected]
    console = Console()
    if not console.is_terminal:
        console = Console(width=_PIPED_WIDTH)
    table = module_table(shown)
    table.columns[0].no_wrap = True  # a truncated module name cannot be copied into a config
    console.print(table)
    if log:
        path = write_module_log(pipe.model, model or DEFAULT_TINY_MODEL, logs_dir)
        typer.echo(f"wrote {len(infos)} module names to {path}")
