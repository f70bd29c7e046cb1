"""Shared fixtures: the built-in tiny pipelines loaded once, a session cache for tiny checkpoints, PostgreSQL schemas.

Helpers that are functions rather than fixtures (the parity fixtures' folders, goldens and models, checkpoint
copies, the CLI run in this process) are in ``testkit.py``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from coglens.pipeline import Pipeline

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tiny checkpoints built by tests go to a session temp dir, never the user's cache."""
    os.environ.setdefault("COGLENS_CACHE", str(tmp_path_factory.mktemp("coglens-cache")))


@pytest.fixture(scope="session")
def tiny_pipelines() -> Callable[..., Pipeline]:
    """``tiny_pipelines(variant="cogvlm2", device="cpu")``: the built-in tiny checkpoint as a Pipeline, loaded once
    per session and device (``device=None``: the commands' default, CUDA when present, so what a ``coglens``
    process computes).

    Shared: use it read-only (ask, stream, build inputs, forward passes, hooks that are removed again). A test that
    changes the weights or dtype, checks the engine's statistics, or hands the engine to a scheduler it may leave
    busy loads a Pipeline of its own.
    """
    from coglens.pipeline import Pipeline, pick_device

    loaded: dict[tuple[str, str], Pipeline] = {}

    def load(variant: str = "cogvlm2", device: str | None = "cpu") -> Pipeline:
        key = (variant, str(pick_device(device)))  # "cpu" and None are one model on a machine without a GPU
        if key not in loaded:
            loaded[key] = Pipeline.load(f"tiny:{variant}", device=device)
        return loaded[key]

    return load


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_pipelines: Callable[..., Pipeline]) -> Pipeline:
    """The built-in tiny CogVLM2 on the CPU, loaded once (read-only: see ``tiny_pipelines``)."""
    return tiny_pipelines("cogvlm2")


def _postgres_url() -> str:
    url = os.environ.get("COGLENS_TEST_PG_URL")
    if url:
        return url
    if os.environ.get("CI") == "true":  # CI starts PostgreSQL: its tests must never skip silently there
        pytest.fail('CI=true but COGLENS_TEST_PG_URL is unset: run `eval "$(.ci/postgres.sh)"` before pytest')
    pytest.skip('COGLENS_TEST_PG_URL is unset; `eval "$(.ci/postgres.sh)"` runs the PostgreSQL tests')


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A real PostgreSQL URL whose connections use a fresh, empty schema, dropped after the test."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    base = _postgres_url()
    schema = f"coglens_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()
