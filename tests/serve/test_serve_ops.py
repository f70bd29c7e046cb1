"""Operations: JSON access lines, Prometheus metrics by protocol and status, /health."""

from __future__ import annotations

import json
import logging

import httpx
from serve_helpers import run_server

from coglens.pipeline import Pipeline
from coglens.serve.settings import ServeSettings


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_access_log_and_metrics():
    access = logging.getLogger("coglens.serve.access")
    handler, level = _Lines(), access.level
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        # a pipeline of its own: the metrics count this server's requests alone
        with run_server(ServeSettings(), pipeline=Pipeline.load("tiny:cogvlm2")) as server:
            ok = httpx.post(f"{server.url}/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 3}})
            bad = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": []})
            metrics = httpx.get(f"{server.url}/metrics")
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    # this server's lines (a previous test's server may still log a late request on the shared access logger)
    ids = (ok.headers["x-request-id"], bad.headers["x-request-id"])
    records = [r for r in map(json.loads, handler.lines) if r.get("request_id") in ids]
    assert len(records) == 2
    first = records[0]
    assert first["path"] == "/generate" and first["status"] == 200 and first["protocol"] == "tgi"
    assert first["completion_tokens"] == 3 and first["prompt_tokens"] > 0 and first["duration_ms"] > 0
    assert first["request_id"] == ok.headers["x-request-id"]
    assert records[1]["status"] == 400 and "messages" in records[1]["error"]
    assert bad.headers["x-request-id"] == records[1]["request_id"]

    text = metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'coglens_requests_total{protocol="tgi",status="200"} 1.0' in text
    assert 'coglens_requests_total{protocol="openai",status="400"} 1.0' in text
    assert 'coglens_completion_tokens_total{protocol="tgi"} 3.0' in text
    for name in ("coglens_request_duration_seconds_bucket", "coglens_time_to_first_token_seconds_bucket",
                 "coglens_generation_duration_seconds_bucket", "coglens_queue_depth", "coglens_running_requests",
                 "coglens_engine_batch_size_bucket", "coglens_engine_max_running", "coglens_engine_decode_steps_total"):
        assert name in text, name
