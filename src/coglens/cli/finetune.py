"""``coglens finetune``: train a LoRA adapter from a YAML config (see ``coglens.adapt.FinetuneConfig``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import DeviceOpt, check_input_file


def finetune(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML file: FinetuneConfig's fields.")],
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Stop after this many optimizer "
                                                  "steps (a smoke run); overrides the config's.")] = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Where the adapter and checkpoints "
                                                    "go; overrides the config's.")] = None,
    device: DeviceOpt = None,
) -> None:
    """Fine-tune a LoRA adapter; a rerun with the same output dir resumes from its last checkpoint."""
    check_input_file(config, "--config")
    from ..adapt import FinetuneConfig
    from ..adapt import finetune as run

    settings = FinetuneConfig.from_yaml(config, max_steps=max_steps,
                                        output_dir=str(output_dir) if output_dir else None, device=device)
    result = run(settings)
    summary = f"adapter saved to {settings.output_dir} after {result.step} steps"
    if result.train_loss is not None:
        summary += f"; train loss {result.train_loss:.4f}"
    if result.eval is not None:
        summary += f"; eval loss {result.eval['loss']:.4f}, exact match {result.eval['exact_match']:.2%}"
    typer.echo(summary)
