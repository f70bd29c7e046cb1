"""One writing process per run of a SQLite database.

Two processes extracting the same run into the same file would each resume it, write the same samples twice over
and mark it finished or failed under the other's feet. A run's writer therefore holds an advisory lock, a byte of
``<database>.lock`` chosen by the run's name, for as long as it writes. The operating system drops the lock when
the process ends, however it ends (SIGKILL included), so a killed run can always be resumed; other runs of the
same file are not blocked. The lock file stays (deleting it would let two processes lock two different files).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from coglens.lens.store.connection import database_url
from coglens.lens.store.errors import RunLockedError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; SQLite's own locking still keeps the file consistent
    fcntl = None


def lock_path(database: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(database)}.lock")


@contextmanager
def run_lock(target: str | os.PathLike[str], run_name: str) -> Iterator[None]:
    """Hold the lock of the run `run_name` of the SQLite database `target` (a path or sqlite:// URL) within the
    block; raises `RunLockedError` at once if another process holds it."""
    database = database_url(target).database
    if fcntl is None or not database or database == ":memory:":
        yield
        return
    offset = int.from_bytes(hashlib.sha256(run_name.encode("utf-8", "surrogatepass")).digest()[:6], "big")
    path = lock_path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except OSError:
            raise RunLockedError(
                f"run {run_name!r} of {database} is being written by another process right now; wait for it to "
                "end (then rerun to resume), or give this one another --run-name or --output"
            ) from None
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN, 1, offset)
