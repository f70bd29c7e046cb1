"""The scheduler thread: concurrent requests share decode steps, failures and timeouts stay per request."""

from __future__ import annotations

import asyncio
import time

import pytest

from coglens.engine import GenerationRequest, SamplingParams
from coglens.engine.errors import EngineFailureError, QueueFullError, RequestTimeoutError
from coglens.engine.scheduler import Scheduler
from coglens.pipeline import Pipeline
from coglens.serve.metrics import ServeMetrics


@pytest.fixture()
def pipeline() -> Pipeline:
    """A new one per test (not tests/conftest.py's shared one): the tests read its engine's statistics and break
    its steps on purpose."""
    return Pipeline.load("tiny:cogvlm2", device="cpu", max_batch_size=4)


def _request(pipe: Pipeline, text: str, tokens: int, rid: str) -> GenerationRequest:
    return pipe.request(text, params=SamplingParams(max_new_tokens=tokens, ignore_eos=True), request_id=rid)


async def _collect(group) -> list[int]:
    return [event.token_id async for _, event in group.events()]


def _run(scheduler: Scheduler, coro):
    scheduler.start()
    try:
        return asyncio.run(coro)
    finally:
        scheduler.stop()


def test_concurrent_groups_share_steps_and_match_running_alone(pipeline):
    alone = {text: pipeline.ask(text, params=SamplingParams(max_new_tokens=8, ignore_eos=True)).token_ids
             for text in ("one", "two words", "three short words")}
    metrics = ServeMetrics()
    scheduler = Scheduler(pipeline.engine, max_queue=8, request_timeout_s=30, metrics=metrics)

    async def main():
        groups = [scheduler.submit([_request(pipeline, text, 8, f"r{i}")], protocol="test")
                  for i, text in enumerate(alone)]
        return await asyncio.gather(*(_collect(g) for g in groups))

    assert _run(scheduler, main()) == list(alone.values())
    stats = pipeline.engine.stats
    assert stats.max_running == 3 and stats.decode_rows > stats.decode_steps
    assert b"coglens_engine_batch_size_bucket" in metrics.render()


def test_queue_limit(pipeline):
    scheduler = Scheduler(pipeline.engine, max_queue=2, request_timeout_s=30)  # not started: nothing leaves

    async def main():
        scheduler.submit([_request(pipeline, "a", 2, "a"), _request(pipeline, "b", 2, "b")], protocol="test")
        with pytest.raises(QueueFullError, match="--max-queue"):
            scheduler.submit([_request(pipeline, "c", 2, "c")], protocol="test")

    asyncio.run(main())


def test_a_failing_step_fails_its_requests_and_the_next_request_works(pipeline):
    scheduler = Scheduler(pipeline.engine, max_queue=8, request_timeout_s=30)
    real_step = pipeline.engine.step

    def broken_step():
        pipeline.engine.step = real_step  # fail once
        raise RuntimeError("CUDA out of memory (simulated)")

    pipeline.engine.step = broken_step

    async def main():
        with pytest.raises(EngineFailureError, match="out of memory"):
            await _collect(scheduler.submit([_request(pipeline, "a", 3, "a")], protocol="test"))
        return await _collect(scheduler.submit([_request(pipeline, "b", 3, "b")], protocol="test"))

    assert len(_run(scheduler, main())) == 3
    assert scheduler.engine is not pipeline.engine  # rebuilt after the failure


def test_timeouts_end_only_the_late_request(pipeline):
    scheduler = Scheduler(pipeline.engine, max_queue=8, request_timeout_s=0.2)
    step = pipeline.engine.step

    def slow_step():
        import time

        time.sleep(0.01)
        return step()

    pipeline.engine.step = slow_step

    async def main():
        with pytest.raises(RequestTimeoutError, match="--request-timeout"):
            await _collect(scheduler.submit([_request(pipeline, "long", 500, "long")], protocol="test"))
        scheduler.request_timeout_s = 30
        return await _collect(scheduler.submit([_request(pipeline, "short", 3, "short")], protocol="test"))

    assert len(_run(scheduler, main())) == 3
    assert scheduler.in_flight() == 0


def _slow(pipeline: Pipeline, seconds: float = 0.005) -> None:
    """Give each engine step a floor, so the long request is surely still running while the test acts."""
    step = pipeline.engine.step

    def slow_step():
        time.sleep(seconds)
        return step()

    pipeline.engine.step = slow_step


@pytest.fixture()
def one_row() -> Pipeline:
    """A batch of one: one request runs, the others wait in the scheduler's queue."""
    return Pipeline.load("tiny:cogvlm2", device="cpu", max_batch_size=1)


def test_aborting_queued_requests_behind_the_head_drops_only_them(one_row):
    _slow(one_row)
    scheduler = Scheduler(one_row.engine, max_queue=8, request_timeout_s=30)

    async def main():
        running = scheduler.submit([_request(one_row, "long", 40, "long")], protocol="test")
        queued = [scheduler.submit([_request(one_row, "short", 3, f"q{i}")], protocol="test") for i in range(3)]
        queued[1].cancel()  # a client of a request that is not at the head of the queue goes away
        queued[2].cancel()
        assert scheduler.in_flight() == 2  # "long" and q0: the cancelled ones are gone at once
        return await asyncio.gather(_collect(running), _collect(queued[0]))

    long, first = _run(scheduler, main())
    assert (len(long), len(first)) == (40, 3)
    assert one_row.engine.stats.prefill_sequences == 2  # q1 and q2 never ran
    assert scheduler.in_flight() == 0 and scheduler.queued() == 0


def test_timeouts_of_queued_requests_behind_the_head_end_only_them(one_row):
    _slow(one_row, 0.01)
    scheduler = Scheduler(one_row.engine, max_queue=8, request_timeout_s=30)

    async def main():
        running = scheduler.submit([_request(one_row, "long", 30, "long")], protocol="test")
        head = scheduler.submit([_request(one_row, "short", 3, "q0")], protocol="test")
        scheduler.request_timeout_s = 0.05  # only the two behind the head expire while "long" runs
        late = [scheduler.submit([_request(one_row, "short", 3, f"q{i}")], protocol="test") for i in (1, 2)]
        scheduler.request_timeout_s = 30
        for group in late:
            with pytest.raises(RequestTimeoutError, match="--request-timeout"):
                await _collect(group)
        return await asyncio.gather(_collect(running), _collect(head))

    long, first = _run(scheduler, main())
    assert (len(long), len(first)) == (30, 3)
    assert one_row.engine.stats.prefill_sequences == 2
    assert scheduler.in_flight() == 0
