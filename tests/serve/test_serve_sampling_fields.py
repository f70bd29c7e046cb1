"""Every request field does what it says or is refused by name: strict types, NaN, refused and ignored fields,
and the MindIE fields of Triton generate (typical_p, watermark, perf_stat, batch_size)."""

from __future__ import annotations

import json

import httpx
import pytest
from serve_helpers import greedy

from coglens.engine import SamplingParams
from coglens.serve.wire import IGNORED, REFUSED

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "Hi"}]


def _post(server, path: str, body: dict) -> httpx.Response:
    # json.dumps writes NaN and Infinity as Python's json module (and curl users) do
    return httpx.post(server.url + path, content=json.dumps(body), headers=server.headers)


def _error(response: httpx.Response) -> str:
    body = response.json()
    return body["error"]["message"] if isinstance(body["error"], dict) else body["error"]


@pytest.mark.parametrize(("path", "body", "field"), [
    (CHAT, {"messages": USER, "temperature": float("nan")}, "temperature"),
    (CHAT, {"messages": USER, "top_p": float("inf")}, "top_p"),
    ("/generate", {"prompt": "Hi", "temperature": float("-inf")}, "temperature"),
    ("/v2/models/cogvlm2/generate", {"text_input": "Hi", "parameters": {"typical_p": float("nan")}},
     "parameters.typical_p"),
])
def test_nan_and_infinity_are_not_numbers(server, path, body, field):
    response = _post(server, path, body)
    assert response.status_code == 400
    assert _error(response).startswith(f"{field}: ") and "is not a number" in _error(response)


@pytest.mark.parametrize(("path", "body", "field"), [
    (CHAT, {"messages": USER, "max_tokens": True}, "max_tokens"),
    (CHAT, {"messages": USER, "stream": "yes"}, "stream"),
    (CHAT, {"messages": USER, "temperature": "0.5"}, "temperature"),
    (CHAT, {"messages": USER, "n": 1.5}, "n"),
    ("/generate", {"prompt": "Hi", "ignore_eos": 1}, "ignore_eos"),
    ("/v2/models/cogvlm2/generate", {"text_input": "Hi", "parameters": {"do_sample": "true"}},
     "parameters.do_sample"),
])
def test_types_are_strict(server, path, body, field):
    response = _post(server, path, body)
    assert response.status_code == 400, response.text
    assert _error(response).startswith(f"{field}: ")


@pytest.mark.parametrize(("path", "body", "field"), [
    (CHAT, {"messages": USER, "functions": [{"name": "f"}]}, "functions"),
    (CHAT, {"messages": USER, "modalities": ["text", "audio"]}, "modalities"),
    (CHAT, {"messages": USER, "frobnicate": 1}, "frobnicate"),
    ("/generate", {"prompt": "Hi", "min_p": 0.1}, "min_p"),
    ("/generate", {"prompt": "Hi", "logprobs": 2}, "logprobs"),
    ("/generate", {"prompt": "Hi", "best_of": 2}, "best_of"),
    ("/generate", {"prompt": "Hi", "typical_p": 0.5}, "typical_p"),  # not a vLLM field
    ("/v2/models/cogvlm2/generate", {"text_input": "Hi", "parameters": {"bad_words": ["x"]}},
     "parameters.bad_words"),
])
def test_unimplemented_fields_are_refused_by_name(server, path, body, field):
    response = _post(server, path, body)
    assert response.status_code == 400, response.text
    assert _error(response).startswith(f"{field}: ")


def test_vllm_model_field_is_ignored_as_vllm_does(server, tiny_pipeline):
    response = _post(server, "/generate", {"prompt": "Hi", "model": "llama", "max_tokens": 3, "temperature": 0})
    assert response.json() == {"text": ["Hi" + greedy(tiny_pipeline, "Hi", 3)]}


def test_the_decision_table_is_consistent():
    assert not set(REFUSED) & set(IGNORED)
    assert all(why and isinstance(off, tuple) for why, off in REFUSED.values())


def test_triton_typical_p_watermark_and_batch_size(server, tiny_pipeline):
    parameters = {"do_sample": True, "typical_p": 0.4, "watermark": True, "seed": 9, "max_new_tokens": 6,
                  "batch_size": 100}
    response = _post(server, "/v2/models/cogvlm2/generate", {"text_input": "Hi", "parameters": parameters})
    assert response.status_code == 200, response.text
    params = SamplingParams(max_new_tokens=6, do_sample=True, typical_p=0.4, watermark=True, seed=9)
    assert response.json()["text_output"] == tiny_pipeline.ask("Hi", params=params).text


def test_triton_perf_stat_times_every_token(server, tiny_pipeline):
    body = {"text_input": "Hi", "parameters": {"max_new_tokens": 5, "perf_stat": True}}
    details = _post(server, "/v2/models/cogvlm2/generate", body).json()["details"]
    expected = tiny_pipeline.ask("Hi", params=SamplingParams(max_new_tokens=5))
    assert [token_id for token_id, _ in details["perf_stat"]] == expected.token_ids
    assert all(ms >= 0 for _, ms in details["perf_stat"])
    assert details["first_token_ms"] == details["perf_stat"][0][1] > 0
    assert details["generated_tokens"] == 5

    with httpx.stream("POST", f"{server.url}/v2/models/cogvlm2/generate_stream", json=body,
                      headers=server.headers) as stream:
        events = [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]
    assert "".join(e["text_output"] for e in events) == greedy(tiny_pipeline, "Hi", 5)
    assert [t for t, _ in events[-1]["details"]["perf_stat"]] == expected.token_ids
    assert all("details" not in e for e in events[:-1])
