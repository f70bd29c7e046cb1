"""Fixtures for the processing tests: the parity checkpoints' configs (goldens and cases.json: testkit)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from testkit import parity_folder

from coglens.modeling.configuration_cogvlm import CogvlmConfig, load_config


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., CogvlmConfig]:
    """``tiny_config(name, **overrides)``: the config.json of a parity checkpoint."""
    return lambda name, **overrides: load_config(parity_folder(name), **overrides)
