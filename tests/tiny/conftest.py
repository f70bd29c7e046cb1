"""Shared helpers: the parity fixtures (THUDM's layout, written by the original code) and a built checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
from parity_paths import PARITY_DIR

from coglens.tiny import TINY_VARIANTS, write_tiny_checkpoint


@pytest.fixture
def fixture_dir():
    """``fixture_dir(variant)``: the fixture's single-file checkpoint folder."""

    def find(variant: str, suffix: str = "") -> Path:
        path = PARITY_DIR / f"{variant}-tiny{suffix}"
        if not path.is_dir():
            pytest.fail(f"parity fixtures not found at {path}")
        return path

    return find


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every variant written once with the defaults (seed 0, float32)."""
    root = tmp_path_factory.mktemp("tiny")
    return {v: write_tiny_checkpoint(v, root / v) for v in TINY_VARIANTS}
