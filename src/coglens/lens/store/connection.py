"""Turn a path or URL into a SQLAlchemy engine: SQLite (a file path) tuned for bulk writes, or PostgreSQL.

Every failure to reach the database becomes a `LensDatabaseError` that names the database and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from coglens.lens.store.errors import LensDatabaseError

# WAL lets readers work while a run writes; synchronous=NORMAL is durable across application crashes in WAL
# mode (only an OS crash can lose the last commits, never corrupt the file).
_SQLITE_PRAGMAS = (
    "journal_mode=WAL",
    "synchronous=NORMAL",
    "foreign_keys=ON",
    "temp_store=MEMORY",
    "cache_size=-65536",  # 64 MiB page cache
    "mmap_size=268435456",
    "busy_timeout=30000",
)

# Below SQLite's and PostgreSQL's bound-parameter limits for `IN (...)` lists.
IN_CHUNK = 500

T = TypeVar("T")


def chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    """`items` in consecutive slices of at most `size`."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def database_url(target: str | os.PathLike[str]) -> URL:
    """A URL as given (`postgresql+psycopg://...`, `sqlite:///...`), or a file path as a SQLite URL."""
    text = os.fspath(target)
    if "://" in text:
        try:
            return make_url(text)
        except ArgumentError as error:
            raise LensDatabaseError(f"malformed database URL {text!r}: {error}") from None
    return URL.create("sqlite", database=str(Path(text).expanduser().absolute()))


def describe(url: URL) -> str:
    """How to name the database in messages: the file path, or the URL without its password."""
    return url.database if url.get_backend_name() == "sqlite" and url.database else url.render_as_string()


def _check_sqlite_path(url: URL, *, create: bool) -> None:
    if not url.database or url.database == ":memory:":
        raise LensDatabaseError("an in-memory SQLite database cannot be shared between connections; give a file path")
    path = Path(url.database)
    if path.is_dir():
        raise LensDatabaseError(f"{path} is a directory; give a database file path such as {path / 'lens.db'}")
    if path.exists():
        if not os.access(path, os.R_OK | (os.W_OK if create else 0)):
            needed = "read and write" if create else "read"
            raise LensDatabaseError(f"{path} is not accessible: it needs {needed} permission")
    elif create:
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        raise LensDatabaseError(f"no database at {path}: check the path (a lens run writes it first)")


def _configure_sqlite(sql_engine: Engine) -> None:
    @event.listens_for(sql_engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin (see "begin" below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(sql_engine, "begin")
    def _on_begin(connection) -> None:
        # sqlite3 would only BEGIN at the first INSERT/DELETE, leaving earlier SELECTs outside the transaction.
        connection.exec_driver_sql("BEGIN")


def create_sql_engine(target: str | os.PathLike[str], *, create: bool) -> tuple[Engine, str]:
    """Connect to `target`; `create=False` requires the database to exist. Returns (sql_engine, display name)."""
    url = database_url(target)
    name = describe(url)
    is_sqlite = url.get_backend_name() == "sqlite"
    if is_sqlite:
        _check_sqlite_path(url, create=create)
    try:
        sql_engine = create_engine(url, connect_args={"timeout": 30} if is_sqlite else {})
    except (NoSuchModuleError, ModuleNotFoundError) as error:
        raise LensDatabaseError(
            f"no database driver for {name}: {error}; for PostgreSQL install `pip install 'coglens[postgres]'` "
            "and use a postgresql+psycopg:// URL"
        ) from None
    if is_sqlite:
        _configure_sqlite(sql_engine)
    try:
        with sql_engine.connect():
            pass
    except DBAPIError as error:
        sql_engine.dispose()
        raise LensDatabaseError(f"cannot open {name}: {error.orig}") from None
    return sql_engine, name
