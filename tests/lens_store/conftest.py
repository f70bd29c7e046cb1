"""Fixtures: every `db_target` test runs against SQLite and PostgreSQL (each test in its own PG schema).

PostgreSQL tests need COGLENS_TEST_PG_URL (`eval "$(.ci/postgres.sh)"`); without it they skip locally and
FAIL under CI=true, so CI can never skip them silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url


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
    schema = f"lens_test_{uuid.uuid4().hex[:12]}"
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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_target(request, tmp_path) -> str:
    """A database to write to: a SQLite file path, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "lens.db")
    return request.getfixturevalue("pg_url")
