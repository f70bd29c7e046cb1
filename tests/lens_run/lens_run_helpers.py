"""Paths, commands run as processes of their own, and reading a whole lens database back to compare runs row by row."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

import coglens.lens

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples/images"
DEMO_CONFIG = REPO / "configs/demo.yaml"

RowKey = tuple[str, str, str, int]  # sample key, module, io, step


def run_command(*cmd: str, cwd: Path = REPO, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    """Run `cmd` in its own process group; on timeout the whole group (torchrun's workers too) is killed."""
    process = subprocess.Popen(
        cmd,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)


def stored_rows(target: str | Path, run: str | None = None) -> dict[RowKey, np.ndarray]:
    """Every stored activation of `run` (the only run when None), keyed by (sample, module, io, step)."""
    rows: dict[RowKey, np.ndarray] = {}
    with coglens.lens.open(target) as db:
        for entry in db.contents(run=run).itertuples():
            for arrays, meta in db.iter_activations(
                entry.module, run=run, io=entry.io, step=entry.step, stack=False
            ):
                for array, key in zip(arrays, meta["sample_key"], strict=True):
                    rows[key, entry.module, entry.io, int(entry.step)] = array
    return rows


def assert_same_rows(
    actual: Mapping[RowKey, np.ndarray], expected: Mapping[RowKey, np.ndarray], tol: float = 0
) -> None:
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert actual[key].shape == value.shape, key
        np.testing.assert_allclose(actual[key], value, atol=tol, rtol=tol, err_msg=str(key))


def write_manifest(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(dict(row)) + "\n" for row in rows))
    return path
