"""Fixtures for the lens runner: the tiny model loaded once, config building, a PostgreSQL schema per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from coglens.lens.config import LensConfig, load_lens_config
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


def _postgres_url() -> str:
    url = os.environ.get("COGLENS_TEST_PG_URL")
    if url:
        return url
    if os.environ.get("CI") == "true":
        pytest.fail('CI=true but COGLENS_TEST_PG_URL is unset: run `eval "$(.ci/postgres.sh)"` before pytest')
    pytest.skip('COGLENS_TEST_PG_URL is unset; `eval "$(.ci/postgres.sh)"` runs the PostgreSQL tests')


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL whose connections use a fresh, empty schema, dropped after the test."""
    base = _postgres_url()
    schema = f"lens_run_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield (
            make_url(base)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()
