"""``coglens merge-adapter BASE ADAPTER OUT``: a checkpoint with a PEFT adapter merged in, in THUDM's layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import check_adapter, check_output_dir


def merge_adapter_command(
    base: Annotated[str, typer.Argument(help="Base checkpoint folder (THUDM layout), hub id or tiny:VARIANT.")],
    adapter: Annotated[Path, typer.Argument(help="PEFT adapter folder (adapter_config.json + weights).")],
    out: Annotated[Path, typer.Argument(help="New folder for the merged checkpoint.")],
) -> None:
    """Merge a PEFT adapter (e.g. LoRA) into the base weights and save a full checkpoint: it loads and quantizes
    like any release, with no peft needed."""
    check_adapter(adapter, None)
    check_output_dir(out, "OUT")

    from ..modeling.adapters import merge_adapter
    from ..pipeline import resolve_model_path

    written = merge_adapter(resolve_model_path(base), adapter, out)
    typer.echo(f"wrote {written}")
