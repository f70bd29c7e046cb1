"""``coglens modules``: every module name of a model, with its class, parameters and what it returns."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ._options import (
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    QuantizeOpt,
    QuantizeVisionOpt,
    TokenizerOpt,
    check_dtype,
    check_output_dir,
    check_quantize,
)

if TYPE_CHECKING:
    from torch import nn

    from coglens.lens.capture.modules import ModuleInfo

_PIPED_WIDTH = 240  # rich wraps at 80 columns when not on a terminal; shapes would wrap mid-word


def modules(
    model: ModelOpt = None,
    tokenizer: TokenizerOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    quantize: QuantizeOpt = None,
    quantize_vision: QuantizeVisionOpt = False,
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
    check_quantize(quantize, quantize_vision)
    if log:
        check_output_dir(logs_dir, "--logs-dir")

    from rich.console import Console

    from coglens.lens.capture.modules import module_table, resolve_modules
    from coglens.lens.run.discovery import list_modules, write_module_log
    from coglens.pipeline import DEFAULT_TINY_MODEL, Pipeline
    from coglens.processing import CogvlmProcessor

    pipe = Pipeline.load(model, tokenizer=tokenizer, dtype=dtype, device=device, quantize=quantize,
                         quantize_vision=quantize_vision)
    selected = None if not match else {spec.name for spec in resolve_modules(pipe.model, match)}
    processor = CogvlmProcessor(pipe.tokenizer, pipe.config) if dry_run else None
    infos = name_quantized_weights(pipe.model, list_modules(pipe.model, processor))
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


def name_quantized_weights(model: nn.Module, infos: list[ModuleInfo]) -> list[ModuleInfo]:
    """Add the weight's tensor class to the class of a module whose weight is quantized in place: torchao keeps
    ``Linear`` and swaps its weight for e.g. ``Int8Tensor`` (bitsandbytes swaps the class itself, Linear4bit), so
    without it the table would not show which layers run quantized."""
    import torch

    named = []
    for info in infos:
        weight = getattr(model.get_submodule(info.name), "weight", None)
        kind = type(weight.data) if isinstance(weight, torch.Tensor) else torch.Tensor
        named.append(info if kind is torch.Tensor else replace(info, class_name=f"{info.class_name} ({kind.__name__})"))
    return named
