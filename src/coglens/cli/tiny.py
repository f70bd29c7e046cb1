"""``coglens tiny VARIANT DIR``: write a tiny random checkpoint to try every command without real weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coglens.tiny.variants import TINY_VARIANTS, UnknownTinyVariantError, get_tiny_variant


def tiny(
    variant: Annotated[str, typer.Argument(help=f"Checkpoint family: {' | '.join(TINY_VARIANTS)}.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder to write (created if missing; must hold nothing else).")],
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random weights.")] = 0,
) -> None:
    """Write a tiny, randomly initialised checkpoint and tokenizer in THUDM's layout (outputs are meaningless)."""
    try:
        get_tiny_variant(variant)  # before torch loads
    except UnknownTinyVariantError as err:
        raise typer.BadParameter(str(err), param_hint="VARIANT") from None
    if out_dir.exists() and not out_dir.is_dir():
        raise typer.BadParameter(f"{out_dir} is a file; give a folder path for the tiny checkpoint",
                                 param_hint="OUT_DIR")

    from coglens.tiny import TinyOutputDirError, write_tiny_checkpoint

    try:
        written = write_tiny_checkpoint(variant, out_dir, seed=seed)
    except TinyOutputDirError as err:
        raise typer.BadParameter(str(err), param_hint="OUT_DIR") from None
    typer.echo(f"Wrote the tiny {variant} checkpoint (seed {seed}, random weights) to {written}:")
    for path in sorted(written.iterdir()):
        typer.echo(f"  {path.name:<36} {path.stat().st_size:>9,d} bytes")
