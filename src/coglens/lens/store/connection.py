"""Turn a path or URL into a SQLAlchemy engine: SQLite (a file path) tuned for bulk writes, or PostgreSQL.

Every failure to reach the database becomes a `LensDatabaseError` that names the database and the fix.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError

from coglens.lens.store.errors import LensDatabaseError, LensWriteError

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

_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full"
_PG_DISK_FULL = "53100"
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

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
        except (ArgumentError, ValueError):  # a message may quote the URL, password and all
            scheme = text.partition("://")[0]
            raise LensDatabaseError(
                f"malformed database URL ({scheme}://...): expected {scheme}://USER:PASSWORD@HOST:PORT/DATABASE"
            ) from None
    return URL.create("sqlite", database=str(Path(text).expanduser().absolute()))


def describe(url: URL) -> str:
    """How to name the database in messages: the file path, or the URL without its password."""
    return url.database if url.get_backend_name() == "sqlite" and url.database else without_password(url)


def without_password(target: str | os.PathLike[str] | URL) -> str:
    """A database URL as text with its credentials left out (the password, in the userinfo or in the query), so
    that it can be stored or shown; a file path stays as it is."""
    if not isinstance(target, URL):
        if "://" not in os.fspath(target):
            return os.fspath(target)
        target = database_url(target)
    url = target._replace(password=None).difference_update_query(["password"])
    return url.render_as_string(hide_password=False)


def write_failure(name: str, error: BaseException) -> LensWriteError:
    """A failed write to the database `name` (disk full, locked, connection lost) as one clear error."""
    full = is_storage_full(error)
    cause = getattr(error, "orig", None) or error  # the driver's words, without SQLAlchemy's SQL dump
    if full:
        what = "the disk (or the database's size limit) is full"
    elif "database is locked" in str(cause):
        what = "another process kept the database locked for longer than the 30 s this one waits"
    else:
        what = f"{type(cause).__name__}: {cause}"
    wrapped = LensWriteError(f"writing to {name} failed: {what}", full=full)
    wrapped.__cause__ = error
    return wrapped


def is_storage_full(error: BaseException) -> bool:
    """Whether a write failed because the disk (or the database's size limit) is full: SQLite's SQLITE_FULL,
    PostgreSQL's disk_full (SQLSTATE 53100), or ENOSPC/EDQUOT/EFBIG from the operating system."""
    if isinstance(error, OperationalError):
        error = error.orig
    if isinstance(error, OSError):
        return error.errno in _FULL_ERRNOS
    code = getattr(error, "sqlite_errorcode", None) or getattr(error, "sqlstate", None)
    return code in (_SQLITE_FULL, _PG_DISK_FULL)


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


def _configure_sqlite(sql_engine: Engine, *, writer: bool) -> None:
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
        # A writer takes the write lock at once (IMMEDIATE): waiting for it honours busy_timeout, whereas a read
        # transaction that later writes fails at once with "database is locked" if another process wrote meanwhile.
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")


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
        _configure_sqlite(sql_engine, writer=create)
    try:
        with sql_engine.connect():
            pass
    except DBAPIError as error:
        sql_engine.dispose()
        raise LensDatabaseError(f"cannot open {name}: {error.orig}") from None
    return sql_engine, name
