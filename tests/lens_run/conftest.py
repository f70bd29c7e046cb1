"""Fixtures for the lens runner: config building (the tiny pipeline and PostgreSQL schemas are tests/conftest.py's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from coglens.lens.run.config import LensConfig, load_lens_config


@pytest.fixture
def make_config(tmp_path: Path):
    """``make_config(key=value, ...)``: a LensConfig written to and read from a YAML file, as users do."""

    def make(**values: Any) -> LensConfig:
        settings = {"model_path": "tiny:cogvlm2", "output": str(tmp_path / "lens.db"), **values}
        path = tmp_path / "lens.yaml"
        path.write_text(yaml.safe_dump(settings))
        return load_lens_config(path)

    return make
