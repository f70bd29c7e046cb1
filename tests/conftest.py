"""Shared fixtures: where the parity fixtures live, and loaded tiny reference models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

FIXTURES = Path(os.environ.get("COGLENS_FIXTURES", Path(__file__).resolve().parents[2] / "shared/fixtures/parity"))
PARITY_SETS = ("cogvlm", "cogvlm2", "cogvlm2-video")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"parity fixtures not found at {FIXTURES}; set COGLENS_FIXTURES")
    return FIXTURES


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tiny checkpoints built by tests go to a session temp dir, never the user's cache."""
    os.environ.setdefault("COGLENS_CACHE", str(tmp_path_factory.mktemp("coglens-cache")))
