"""32 concurrent streaming clients on the tiny model: all complete, none errors, and the metrics show batching."""

from __future__ import annotations

import asyncio
import re

import httpx
from openai import AsyncOpenAI
from serve_helpers import greedy, run_server

from coglens.pipeline import Pipeline
from coglens.serve.settings import ServeSettings

CLIENTS = 32
TOKENS = 24
PROMPTS = ["Describe the scene.", "What colour is it?", "Count the shapes.", "Tell me a story."]


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


async def _stream(client: AsyncOpenAI, prompt: str) -> tuple[str, int]:
    stream = await client.chat.completions.create(
        model="tiny:cogvlm2", messages=[{"role": "user", "content": prompt}], max_tokens=TOKENS, temperature=0,
        stream=True, stream_options={"include_usage": True})
    text, usage = [], 0
    async for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage.completion_tokens
    return "".join(text), usage


async def _load(url: str) -> list[tuple[str, int]]:
    async with AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0) as client:
        return await asyncio.gather(*(_stream(client, PROMPTS[i % len(PROMPTS)]) for i in range(CLIENTS)))


def test_concurrent_streams_are_batched_and_answer_like_the_engine(tiny_pipeline):
    # a pipeline of its own: the metrics below count what its engine did, for these clients alone
    with run_server(ServeSettings(), pipeline=Pipeline.load("tiny:cogvlm2")) as server:
        results = asyncio.run(_load(server.url))
        metrics = httpx.get(f"{server.url}/metrics").text
    expected = {prompt: greedy(tiny_pipeline, prompt, TOKENS) for prompt in PROMPTS}
    for i, (text, usage) in enumerate(results):
        assert text == expected[PROMPTS[i % len(PROMPTS)]]
        assert usage == TOKENS
    assert _metric(metrics, "coglens_engine_max_running") > 1
    assert _metric(metrics, "coglens_engine_decode_rows_total") > _metric(metrics, "coglens_engine_decode_steps_total")
    assert _metric(metrics, 'coglens_requests_total{protocol="openai",status="200"}') == CLIENTS
    assert _metric(metrics, 'coglens_completion_tokens_total{protocol="openai"}') == CLIENTS * TOKENS
    assert _metric(metrics, "coglens_queue_depth") == 0 and _metric(metrics, "coglens_running_requests") == 0
