"""Limits (body, prompt, queue, time) answer 4xx/5xx naming their flag; a client that leaves stops its work."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from serve_helpers import Server, run_server

from coglens.pipeline import Pipeline
from coglens.serve.limits import ServeLimits
from coglens.serve.settings import ServeSettings

LONG = {"max_tokens": 1500, "temperature": 0, "ignore_eos": True}


def _chat(text: str = "Go on.", **fields) -> dict:
    return {"messages": [{"role": "user", "content": text}], **fields}


@pytest.fixture(scope="module")
def tight() -> Iterator[Server]:
    """One request at a time, one more queued, small bodies and prompts, and steps of at least 5 ms (so a
    1500-token answer takes over 7 s and a test can tell an aborted request from a finished one)."""
    limits = ServeLimits(max_body_bytes=2048, max_prompt_tokens=20, max_queue=1)
    pipeline = Pipeline.load("tiny:cogvlm2", max_batch_size=1)
    step = pipeline.engine.step

    def slow_step():
        time.sleep(0.005)
        return step()

    pipeline.engine.step = slow_step
    with run_server(ServeSettings(limits=limits), pipeline=pipeline) as s:
        yield s


def _wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_body_size_limit_in_each_protocol(tight):
    big = "x" * 4000
    for path, body in (("/v1/chat/completions", _chat(big)), ("/generate", {"inputs": big}),
                       ("/v2/models/tiny:cogvlm2/generate", {"text_input": big})):
        response = httpx.post(f"{tight.url}{path}", json=body)
        assert response.status_code == 413, path
        assert "--max-body-mb" in str(response.json()["error"]), path


def test_prompt_token_limit(tight):
    response = httpx.post(f"{tight.url}/v1/chat/completions", json=_chat("word " * 30))
    assert response.status_code == 413
    assert "--max-prompt-tokens" in response.json()["error"]["message"]


def test_full_queue_is_a_429_and_a_closed_stream_aborts_its_request(tight):
    scheduler = tight.app.state.scheduler
    with httpx.stream("POST", f"{tight.url}/v1/chat/completions", json=_chat(stream=True, **LONG)) as running:
        lines = running.iter_lines()  # kept: a dropped iterator closes the connection
        assert next(lines).startswith("data: ")
        _wait_for(lambda: scheduler.engine.num_running() == 1)  # it is decoding
        waiting = threading.Thread(target=httpx.post, args=(f"{tight.url}/v1/chat/completions",),
                                   kwargs={"json": _chat(max_tokens=3, temperature=0), "timeout": 30})
        waiting.start()
        _wait_for(lambda: scheduler.queued() == 1)
        response = httpx.post(f"{tight.url}/v1/chat/completions", json=_chat(max_tokens=3))
        assert response.status_code == 429
        assert "--max-queue" in response.json()["error"]["message"]
        assert response.json()["error"]["type"] == "rate_limit_error"
    # leaving the stream aborts the long request, which lets the queued one run
    waiting.join(20)
    _wait_for(lambda: scheduler.in_flight() == 0)
    assert scheduler.engine.stats.generated_tokens < 1500


def test_a_non_streaming_client_that_leaves_aborts_its_request(tight):
    scheduler = tight.app.state.scheduler
    before = scheduler.engine.stats.generated_tokens
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{tight.url}/v1/chat/completions", json=_chat(**LONG), timeout=httpx.Timeout(5, read=0.3))
    _wait_for(lambda: scheduler.in_flight() == 0, timeout_s=5)
    assert scheduler.engine.stats.generated_tokens - before < 1500


def test_request_timeout_is_a_504_naming_its_flag():
    limits = ServeLimits(request_timeout_s=0.3)
    with run_server(ServeSettings(limits=limits), pipeline=Pipeline.load("tiny:cogvlm2")) as impatient:
        response = httpx.post(f"{impatient.url}/v1/chat/completions", json=_chat(**LONG), timeout=30)
        assert response.status_code == 504
        assert "--request-timeout" in response.json()["error"]["message"]
        with httpx.stream("POST", f"{impatient.url}/generate_stream",
                          json={"inputs": "Go on.", "parameters": {"max_new_tokens": 1500}}, timeout=30) as stream:
            events = [line for line in stream.iter_lines() if line.startswith("data:")]
        assert '"error_type":"generation"' in events[-1] and "--request-timeout" in events[-1]
        # after the 200, every protocol reports the failure in-band, in its own shape, as the last event
        streams = {"/v1/chat/completions": _chat(stream=True, **LONG),
                   "/v1/completions": {"prompt": "Go on.", "stream": True, **LONG},
                   "/v2/models/tiny:cogvlm2/generate_stream": {"text_input": "Go on.",
                                                               "parameters": {"max_new_tokens": 1500}},
                   "/generate": {"prompt": "Go on.", "stream": True, "max_tokens": 1500, "ignore_eos": True}}
        for path, body in streams.items():
            with httpx.stream("POST", f"{impatient.url}{path}", json=body, timeout=30) as stream:
                assert stream.status_code == 200
                lines = [line.removeprefix("data: ") for line in stream.iter_lines() if line.strip()]
            if lines[-1] == "[DONE]":  # OpenAI: the error event, then [DONE]
                lines.pop()
            error = json.loads(lines[-1])["error"]
            assert "--request-timeout" in (error if isinstance(error, str) else error["message"]), path
