"""Write batches on a background thread, so the model runs batch n+1 while batch n is encoded and committed.

The queue is bounded: when the database is slower than the model, the producer waits instead of piling up
captured tensors in memory. A write error stops further writes and is raised in the producer's thread at its
next `put` (or on exit); a database or disk failure is raised as a `LensWriteError` that names the database.
On exit, batches already handed over are still written (they are complete), then the
thread ends.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from coglens.lens.store.connection import write_failure
from coglens.lens.store.records import BatchResult
from coglens.lens.store.writer import LensWriter


@dataclass
class WrittenTotals:
    samples: int = 0
    rows: int = 0
    nbytes: int = 0


class BackgroundWriter:
    """``with BackgroundWriter(writer, run_id) as sink: sink.put(result)``; totals in ``sink.written``."""

    def __init__(self, writer: LensWriter, run_id: int, *, max_pending: int = 2) -> None:
        self.writer = writer
        self.run_id = run_id
        self.written = WrittenTotals()
        self._queue: queue.Queue[BatchResult | None] = queue.Queue(maxsize=max_pending)  # None = stop
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="coglens-writer", daemon=True)

    def __enter__(self) -> BackgroundWriter:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._queue.put(None)
        self._thread.join()
        if exc_type is None:
            self._raise_if_failed()

    def put(self, result: BatchResult) -> None:
        """Hand a batch over (waits while `max_pending` batches are queued)."""
        self._raise_if_failed()
        self._queue.put(result)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep draining so a waiting producer is never blocked
            try:
                self.writer.write_batch(self.run_id, item.samples, item.activations)
            except (SQLAlchemyError, OSError) as error:
                self._error = write_failure(self.writer.name, error)
                continue
            except BaseException as error:  # noqa: BLE001 - handed to the producer thread, re-raised there
                self._error = error
                continue
            self.written.samples += len(item.samples)
            self.written.rows += len(item.activations)
            self.written.nbytes += item.nbytes
