"""Fixtures for the adapter tests: a LoRA adapter for the tiny CogVLM2, trained by nobody but saved by peft itself."""

from __future__ import annotations

from pathlib import Path

import pytest
from lora_kit import save_lora


@pytest.fixture(scope="session")
def lora_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter folder for ``tiny:cogvlm2`` (read-only)."""
    return save_lora(tmp_path_factory.mktemp("adapters") / "lora")


@pytest.fixture(scope="session")
def adapted_pipeline(lora_adapter: Path):
    """``tiny:cogvlm2`` with `lora_adapter` merged in, loaded once (read-only)."""
    from coglens.pipeline import Pipeline

    return Pipeline.load("tiny:cogvlm2", adapter=lora_adapter, device="cpu")
