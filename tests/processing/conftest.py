"""Fixtures for the processing tests: goldens, cases.json and the parity checkpoints' configs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from coglens.modeling.configuration_cogvlm import CogvlmConfig, load_config


@pytest.fixture(scope="session")
def goldens(fixtures_dir: Path) -> Callable[[str], dict[str, torch.Tensor]]:
    cache: dict[str, dict[str, torch.Tensor]] = {}

    def load(name: str) -> dict[str, torch.Tensor]:
        if name not in cache:
            cache[name] = load_file(fixtures_dir / f"{name}-tiny-goldens" / "goldens.safetensors")
        return cache[name]

    return load


@pytest.fixture(scope="session")
def cases(fixtures_dir: Path) -> Callable[[str], dict]:
    return lambda name: json.loads((fixtures_dir / f"{name}-tiny-goldens" / "cases.json").read_text())


@pytest.fixture(scope="session")
def tiny_config(fixtures_dir: Path) -> Callable[..., CogvlmConfig]:
    """``tiny_config(name, **overrides)``: the config.json of a parity checkpoint."""
    return lambda name, **overrides: load_config(fixtures_dir / f"{name}-tiny", **overrides)
