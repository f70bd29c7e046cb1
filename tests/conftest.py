"""Shared fixtures: where the parity fixtures live, and loaded tiny reference models."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from parity_paths import PARITY_DIR

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

FIXTURES = PARITY_DIR
PARITY_SETS = ("cogvlm", "cogvlm2", "cogvlm2-video")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"parity fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tiny checkpoints built by tests go to a session temp dir, never the user's cache."""
    os.environ.setdefault("COGLENS_CACHE", str(tmp_path_factory.mktemp("coglens-cache")))


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
