"""Fixtures for the lens runner: the tiny model loaded once, config building, a PostgreSQL schema per test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from coglens.lens.run.config import LensConfig, load_lens_config
from coglens.pipeline import Pipeline


@pytest.fixture(scope="session")
def tiny() -> Pipeline:
    """The built-in tiny CogVLM2 on the CPU, shared by every in-process run."""
    return Pipeline.load("tiny:cogvlm2", device="cpu")


@pytest.fixture
def make_config(tmp_path: Path):
    """``make_config(key=value, ...)``: a LensConfig written to and read from a YAML file, as users do."""

    def make(**values: Any) -> LensConfig:
        settings = {"model_path": "tiny:cogvlm2", "output": str(tmp_path / "lens.db"), **values}
        path = tmp_path / "lens.yaml"
        path.write_text(yaml.safe_dump(settings))
        return load_lens_config(path)

    return make
