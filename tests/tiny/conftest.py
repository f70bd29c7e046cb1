"""Tiny checkpoints written once for the tiny tests (the parity fixtures they are compared with: testkit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coglens.tiny import TINY_VARIANTS, write_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every variant written once with the defaults (seed 0, float32)."""
    root = tmp_path_factory.mktemp("tiny")
    return {v: write_tiny_checkpoint(v, root / v) for v in TINY_VARIANTS}
