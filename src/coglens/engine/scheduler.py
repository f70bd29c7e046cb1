"""The one thread that drives the engine, and the asyncio side that its callers wait on.

Callers on an event loop call :meth:`Scheduler.submit`; the scheduler thread runs ``engine.step()`` while there
is work, so requests that arrive while others decode join the batch at the next step. Each step's token events
are handed back to the event loop in one call per request group. Cancellation (the client went away) and
timeouts become ``engine.abort``; a failing step fails the requests in flight and the engine is rebuilt, so one
bad batch never takes the others down. Failures are :mod:`coglens.engine.errors`: each front end words them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Protocol

from .engine import Engine
from .errors import EngineFailureError, QueueFullError, RequestAbortedError, RequestTimeoutError
from .params import GenerationRequest, TokenEvent

logger = logging.getLogger(__name__)

IndexedEvent = tuple[int, TokenEvent]
_SHUTTING_DOWN = "the server is shutting down; retry on another instance"


class SchedulerMetrics(Protocol):
    """What the scheduler reports (the server's Prometheus metrics implement it: ``coglens.serve.metrics``)."""

    def observe_step(self, batch_size: int, waiting: int, running: int) -> None: ...
    def observe_first_token(self, protocol: str, seconds: float) -> None: ...
    def observe_finished(self, protocol: str, prompt_tokens: int, completion_tokens: int) -> None: ...
    def observe_group_done(self, protocol: str, seconds: float) -> None: ...


class RequestGroup:
    """The engine requests of one call (``n`` choices); their events arrive, indexed, on one queue."""

    def __init__(self, scheduler: Scheduler, requests: list[GenerationRequest], *, deadline: float,
                 protocol: str) -> None:
        self.request_ids = [r.request_id for r in requests]
        self.requests = {r.request_id: r for r in requests}
        self.prompt_tokens = int(requests[0].input_ids.numel())
        self.protocol = protocol
        self.deadline = deadline
        self.submitted_at = time.monotonic()
        self.timed_out = False
        self.generated_tokens = 0  # tokens the consumer has been given (the access log's completion tokens)
        self._scheduler = scheduler
        self._index = {rid: i for i, rid in enumerate(self.request_ids)}
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[list[IndexedEvent] | Exception] = asyncio.Queue()
        self._open = set(self.request_ids)  # consumer side: not yet seen finished
        self._engine_open = set(self.request_ids)  # scheduler side: not yet finished in the engine

    async def events(self) -> AsyncIterator[IndexedEvent]:
        """(choice index, event) pairs until every request has finished; raises why the request failed
        (an :class:`~coglens.engine.errors.EngineError`, or what the engine raised on admitting it)."""
        while self._open:
            item = await self._queue.get()
            if isinstance(item, Exception):
                raise item
            for index, event in item:
                if event.finish_reason == "abort":
                    self._open.discard(event.request_id)
                    raise self._abort_error()
                self.generated_tokens += event.token_id is not None
                yield index, event
                if event.finished:
                    self._open.discard(event.request_id)

    def cancel(self) -> None:
        """Stop the requests that have not finished (idempotent; called when the client goes away)."""
        for rid in list(self._open):
            self._scheduler.abort(rid)

    def _abort_error(self) -> RequestTimeoutError | RequestAbortedError:
        if self.timed_out:
            return RequestTimeoutError(
                f"the request did not finish within {self._scheduler.request_timeout_s:g} s "
                "(raise it with --request-timeout, or ask for fewer tokens)"
            )
        return RequestAbortedError("the request was stopped by the server")

    # --- called from the scheduler thread -------------------------------------------------------

    def _deliver(self, items: list[IndexedEvent] | Exception) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            self._loop.call_soon_threadsafe(self._queue.put_nowait, items)


class Scheduler:
    """Owns the engine: only its thread calls ``engine.add``/``engine.step``; requests wait in a bounded queue.

    Admission is done here rather than in the engine's own waiting list: a queued request can be dropped
    without touching the engine, and the engine only ever holds what fits in its batch, so everything added
    before a step is running after it. Engine aborts are applied by this thread just before admitting, so
    they only ever hit running rows.
    """

    def __init__(self, engine: Engine, *, max_queue: int, request_timeout_s: float,
                 metrics: SchedulerMetrics | None = None) -> None:
        self.engine = engine
        self.max_queue = max_queue
        self.request_timeout_s = request_timeout_s
        self.metrics = metrics
        self._queue: deque[GenerationRequest] = deque()  # submitted, not yet in the engine
        self._groups: dict[str, RequestGroup] = {}  # every request not yet finished, queued or in the engine
        self._aborts: set[str] = set()  # requests in the engine to abort at the start of the next iteration
        self._lock = threading.Lock()  # guards the three above and the engine reference
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="coglens-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop stepping and fail whatever is still in flight with :class:`RequestAbortedError`."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
        with self._lock:
            groups, self._groups = set(self._groups.values()), {}
            self._queue.clear()
        for group in groups:
            group._deliver(RequestAbortedError(_SHUTTING_DOWN))

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def in_flight(self) -> int:
        """Requests submitted and not finished (queued or in the engine)."""
        with self._lock:
            return len(self._groups)

    def queued(self) -> int:
        with self._lock:
            return len(self._queue)

    # --- called from the event loop -------------------------------------------------------------

    def submit(self, requests: list[GenerationRequest], *, protocol: str) -> RequestGroup:
        """Queue the requests of one call, or raise :class:`QueueFullError` when the queue is full."""
        if self._stopping:
            raise RequestAbortedError(_SHUTTING_DOWN)
        group = RequestGroup(self, requests, deadline=time.monotonic() + self.request_timeout_s, protocol=protocol)
        with self._lock:
            if len(self._queue) + len(requests) > self.max_queue:
                raise QueueFullError(
                    f"the server is busy: {len(self._queue)} requests are already waiting for the "
                    f"{self.engine.max_batch_size} places of the batch (queue limit {self.max_queue}, raise it "
                    "with --max-queue); retry later"
                )
            for request in requests:
                self._groups[request.request_id] = group
                self._queue.append(request)
        self._notify()
        return group

    def abort(self, request_id: str) -> None:
        """Drop a queued request, or stop it in the engine at the next iteration."""
        with self._lock:
            if request_id in self._groups:
                self._end_locked(request_id)
        self._notify()

    def _end_locked(self, request_id: str) -> None:
        """Take a request out of the queue, or mark it for an engine abort (``_lock`` held)."""
        at = next((i for i, r in enumerate(self._queue) if r.request_id == request_id), None)
        if at is not None:
            del self._queue[at]  # by position: requests hold tensors, so they must never be compared by value
            del self._groups[request_id]
        else:
            self._aborts.add(request_id)

    def _notify(self) -> None:
        with self._wake:
            self._wake.notify()

    # --- the scheduler thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._queue and not self._aborts and not self.engine.has_work():
                    self._wake.wait()
                if self._stopping:
                    return
            try:
                self._iterate()
            except Exception as exc:  # a broken batch must not kill the thread that serves everyone
                logger.exception("engine step failed; failing the requests in flight and rebuilding the engine")
                self._recover(exc)

    def _iterate(self) -> None:
        self._expire()
        with self._lock:
            for rid in self._aborts:
                self.engine.abort(rid)
            self._aborts.clear()
        self._admit()
        engine = self.engine
        if not engine.has_work():
            return
        batch = engine.num_running()
        events = engine.step()
        if self.metrics is not None:
            self.metrics.observe_step(batch, self.queued() + engine.num_waiting(), engine.num_running())
        self._dispatch(events)

    def _admit(self) -> None:
        """Move queued requests into the engine, as many as its batch has room for."""
        engine = self.engine
        room = engine.max_batch_size - engine.num_running() - engine.num_waiting()
        while room > 0:
            with self._lock:  # held across the move, so an abort finds the request in the queue or the engine
                if not self._queue:
                    return
                request = self._queue.popleft()
                group = self._groups[request.request_id]
                try:
                    engine.add(request)
                    room -= 1
                    continue
                except ValueError as exc:  # a prompt the engine refuses: that request's error, not everyone's
                    error = exc
            self._fail_group(group, error)

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            late = {g for g in self._groups.values() if g.deadline < now}
        for group in late:
            group.timed_out = True
            self._fail_group(group, group._abort_error())

    def _fail_group(self, group: RequestGroup, error: Exception) -> None:
        """End every request of ``group`` (queued ones dropped, running ones aborted) and tell its consumer."""
        with self._lock:
            for rid in group.request_ids:
                if self._groups.get(rid) is group:
                    self._end_locked(rid)
                    self._groups.pop(rid, None)  # its events, if any come, go nowhere
        group._deliver(error)

    def _dispatch(self, events: list[TokenEvent]) -> None:
        by_group: dict[RequestGroup, list[IndexedEvent]] = {}
        finished: list[tuple[RequestGroup, TokenEvent]] = []
        with self._lock:
            for event in events:
                if event.finished:  # step() has retired it: the engine can forget it now
                    self.engine.release(event.request_id)
                group = self._groups.get(event.request_id)
                if group is None:  # failed or cancelled already
                    continue
                by_group.setdefault(group, []).append((group._index[event.request_id], event))
                if event.finished:
                    del self._groups[event.request_id]
                    group._engine_open.discard(event.request_id)
                    finished.append((group, event))
        for group, items in by_group.items():
            group._deliver(items)
        if self.metrics is not None:
            self._report(by_group, finished)

    def _report(self, by_group: dict[RequestGroup, list[IndexedEvent]],
                finished: list[tuple[RequestGroup, TokenEvent]]) -> None:
        now = time.monotonic()
        for group, items in by_group.items():
            if any(event.index == 0 and event.token_id is not None for _, event in items):
                self.metrics.observe_first_token(group.protocol, now - group.submitted_at)
        for group, event in finished:
            completion = event.index + (1 if event.token_id is not None else 0)
            self.metrics.observe_finished(group.protocol, event.prompt_tokens, completion)
            if not group._engine_open:
                self.metrics.observe_group_done(group.protocol, now - group.submitted_at)

    def _recover(self, exc: Exception) -> None:
        with self._lock:
            groups, self._groups = set(self._groups.values()), {}
            self._queue.clear()
            self._aborts.clear()
            old = self.engine
            self.engine = Engine(old.model, old.tokenizer, max_batch_size=old.max_batch_size, adapters=old.adapters,
                                 compile=old.decode_step.compiled)
            self.engine.stats = old.stats
        error = EngineFailureError(f"generation failed ({type(exc).__name__}: {exc}); the server log has details")
        for group in groups:
            group._deliver(error)
