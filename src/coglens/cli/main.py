"""The ``coglens`` command: the root only assembles the sub-commands, each lives in its own module."""

from __future__ import annotations

import logging
import os
import sys

import typer

# The command modules import only typer and light option definitions at module level; each command imports
# torch, transformers, fastapi, gradio... inside its function, so `coglens --help` answers at once
# (tests/cli/test_startup.py keeps it that way).
from .ask import ask
from .chat import chat
from .explain import explain
from .export import export_command
from .extract import extract
from .finetune import finetune
from .logit_lens import logit_lens
from .merge import merge_command
from .merge_adapter import merge_adapter_command
from .modules import modules
from .probe import probe
from .serve import serve
from .tiny import tiny
from .web import web

app = typer.Typer(
    name="coglens",
    help="Run, serve and look inside CogVLM / CogVLM2 / CogVLM2-Video.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(ask)
app.command()(tiny)
app.command()(extract)
app.command()(modules)
app.command("export")(export_command)
app.command("merge")(merge_command)
app.command("merge-adapter")(merge_adapter_command)
app.command()(serve)
app.command()(chat)
app.command()(web)
app.command()(explain)
app.command()(finetune)
app.command("logit-lens")(logit_lens)
app.command()(probe)


def main() -> None:
    """Entry point: user mistakes print one clear line (``COGLENS_DEBUG=1`` shows the traceback)."""
    logging.basicConfig(level=os.environ.get("COGLENS_LOG", "WARNING").upper(), format="%(message)s")
    try:
        app()
    except (ValueError, OSError) as exc:
        if os.environ.get("COGLENS_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # a command with something to keep (extract) says what it kept before this
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
