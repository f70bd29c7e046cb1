"""Helpers every test folder shares (a module of its own: ``conftest`` names clash across folders, so tests import
from here): the parity fixtures' folders, goldens and models; checkpoint copies to edit; the ``coglens`` command,
run in this process or as a process of its own.

Every loader here returns a fresh object on each call, so a test may change what it gets. The loaded-once tiny
pipelines are fixtures of ``tests/conftest.py`` (``tiny_pipeline``, ``tiny_pipelines``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from parity_paths import PARITY_DIR

# --- the parity fixtures (tests/fixtures/parity: THUDM's layout and goldens, written by the original code) -------


def parity_folder(name: str, suffix: str = "") -> Path:
    """``<name>-tiny<suffix>`` of the parity fixtures (suffix ``""``, ``"-sharded"`` or ``"-goldens"``)."""
    path = PARITY_DIR / f"{name}-tiny{suffix}"
    if not path.is_dir():
        pytest.fail(f"parity fixtures not found at {path}")
    return path


def load_goldens(name: str) -> dict[str, torch.Tensor]:
    """The tensors THUDM's code recorded for the ``name`` checkpoint (``goldens.safetensors``), freshly read."""
    from safetensors.torch import load_file

    return load_file(parity_folder(name, "-goldens") / "goldens.safetensors")


def load_cases(name: str) -> dict[str, Any]:
    """The ``cases.json`` next to the goldens: how each recorded case was called."""
    return json.loads((parity_folder(name, "-goldens") / "cases.json").read_text())


def load_parity_model(name: str, *, sharded: bool = False, dtype: torch.dtype = torch.float32) -> Any:
    """A new ``CogvlmForCausalLM`` from the parity checkpoint (single-file, or the sharded copy)."""
    from coglens.modeling import CogvlmForCausalLM

    return CogvlmForCausalLM.from_pretrained(parity_folder(name, "-sharded" if sharded else ""), torch_dtype=dtype)


# --- checkpoints to edit ----------------------------------------------------------------------------------------


def copy_checkpoint(source: Path, dest: Path, *, files: Iterable[str] | None = None,
                    config: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Copy the checkpoint folder ``source`` to ``dest`` (only the named ``files`` if given), then let ``config``
    edit the parsed ``config.json`` in place before it is written back. Returns ``dest``."""
    if files is None:
        shutil.copytree(source, dest)
    else:
        dest.mkdir(parents=True, exist_ok=True)
        for name in files:
            shutil.copy(source / name, dest / name)
    if config is not None:
        edit_config(dest, config)
    return dest


def edit_config(folder: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """Read ``folder/config.json``, let ``change`` edit it in place, write it back. Returns ``folder``."""
    path = folder / "config.json"
    values = json.loads(path.read_text())
    change(values)
    path.write_text(json.dumps(values, indent=2))
    return folder


# --- the coglens command ----------------------------------------------------------------------------------------


def coglens_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m coglens.cli.main``: for the tests
    where the process itself matters (start-up, imports, signals, terminals, environment read at import time)."""
    script = Path(sys.executable).with_name("coglens")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "coglens.cli.main"]


@contextmanager
def _working_directory(path: Path | None) -> Iterator[None]:
    before = Path.cwd()
    if path is not None:
        os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_cli(*args: str, module: str | None = None, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``coglens *args`` run in this process through the console script's own entry point,
    ``coglens.cli.main.main()``: the same one ``error: ...`` line and exit code for a ValueError/OSError, the
    same streams. Returns what ``subprocess.run(..., capture_output=True, text=True)`` would have.
    ``module="coglens.lens"``: ``python -m coglens.lens *args`` instead, run as ``-m`` runs it (runpy, as __main__).

    As in a new process, the root logger starts without handlers, so ``main()``'s ``logging.basicConfig`` sends
    warnings to the captured stderr; an exception ``main()`` lets through prints its traceback there, exit code 1.
    """
    import runpy

    from coglens.cli.main import main

    def entry_point() -> None:
        if module is None:
            main()
        else:
            runpy.run_module(module, run_name="__main__", alter_sys=True)

    argv = ["coglens" if module is None else module, *args]
    stdout, stderr = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level, excepthook = root.handlers[:], root.level, sys.excepthook
    root.handlers.clear()
    try:
        with mock.patch.object(sys, "argv", list(argv)), mock.patch.dict(os.environ, env or {}), \
                _working_directory(cwd), redirect_stdout(stdout), redirect_stderr(stderr):
            try:
                entry_point()
                code = 0
            except SystemExit as exit_:
                if exit_.code is None or isinstance(exit_.code, int):
                    code = exit_.code or 0
                else:  # sys.exit("message"): Python prints it and exits with 1
                    print(exit_.code, file=sys.stderr)
                    code = 1
            except Exception:
                traceback.print_exc(file=sys.stderr)
                code = 1
    finally:
        root.handlers[:] = handlers  # without the one main()'s logging.basicConfig added
        root.setLevel(level)
        sys.excepthook = excepthook  # typer's app() installs its own
    return subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())


def default_sigint() -> None:
    """``preexec_fn`` for children that tests interrupt with SIGINT: restore its default action.

    A suite started as a background job of a non-interactive shell inherits an ignored SIGINT (POSIX), and a
    Python child that starts with SIGINT ignored never raises KeyboardInterrupt, so Ctrl-C tests would time out.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
