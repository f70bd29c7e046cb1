"""Fixtures: every `db_target` test runs against SQLite and PostgreSQL (each test in its own PG schema).

PostgreSQL tests need COGLENS_TEST_PG_URL (`eval "$(.ci/postgres.sh)"`); without it they skip locally and
FAIL under CI=true, so CI can never skip them silently.
"""

from __future__ import annotations

import pytest


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_target(request, tmp_path) -> str:
    """A database to write to: a SQLite file path, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "lens.db")
    return request.getfixturevalue("pg_url")
