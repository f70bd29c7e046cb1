"""huggingface_hub's InferenceClient (TGI protocol) and raw TGI bodies, checked against the engine."""

from __future__ import annotations

import json

import httpx
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import ValidationError
from serve_helpers import API_KEY, IMAGE, data_url, greedy, greedy_params

from coglens.processing.image import load_image


@pytest.fixture(scope="module")
def client(server) -> InferenceClient:
    return InferenceClient(model=server.url, token=API_KEY)


def test_text_generation_equals_the_engine(client, tiny_pipeline):
    assert client.text_generation("Describe the scene.", max_new_tokens=10) == greedy(
        tiny_pipeline, "Describe the scene.", 10)


def test_stream_with_details_gives_tokens_and_a_final_answer(client, tiny_pipeline):
    expected = tiny_pipeline.ask("Tell me more.", params=greedy_params(12))
    events = list(client.text_generation("Tell me more.", max_new_tokens=12, stream=True, details=True))
    assert [e.token.id for e in events] == expected.token_ids
    assert "".join(e.token.text for e in events) == expected.text
    assert [e.token.logprob for e in events] == pytest.approx(expected.logprobs, abs=1e-5)
    assert all(e.generated_text is None for e in events[:-1])
    assert events[-1].generated_text == expected.text
    assert events[-1].details.finish_reason == "length"
    assert events[-1].details.generated_tokens == 12
    assert events[-1].details.input_length == expected.prompt_tokens


def test_non_stream_details_list_every_token(client, tiny_pipeline):
    expected = tiny_pipeline.ask("Hello", params=greedy_params(6))
    out = client.text_generation("Hello", max_new_tokens=6, details=True)
    assert out.generated_text == expected.text
    assert [t.id for t in out.details.tokens] == expected.token_ids
    assert out.details.finish_reason == "length" and out.details.generated_tokens == 6
    assert all(t.special is False for t in out.details.tokens)


def test_stop_sequence_is_reported_as_such(client, tiny_pipeline):
    full = greedy(tiny_pipeline, "Describe the scene.", 12)
    stop = full[3:6]
    out = client.text_generation("Describe the scene.", max_new_tokens=12, stop=[stop], details=True)
    assert out.generated_text == full[: full.index(stop)]
    assert out.details.finish_reason == "stop_sequence"


def test_validation_errors_raise_the_clients_validation_error(client):
    with pytest.raises(ValidationError, match="max_new_tokens"):
        client.text_generation("Hello", max_new_tokens=100_000)


def test_generate_route_with_typed_parts_and_seed_extras(server, tiny_pipeline):
    body = {"inputs": [{"type": "text", "text": "What is it?"},
                       {"type": "image_url", "image_url": data_url(IMAGE.read_bytes(), "image/png")}],
            "parameters": {"max_new_tokens": 8, "details": False, "decoder_input_details": False,
                           "repetition_penalty": 1.0, "return_full_text": False, "seed": None, "truncate": None,
                           "typical_p": 0.5, "watermark": False, "adapter_id": "456"}}
    response = httpx.post(f"{server.url}/generate", content=json.dumps(body), headers=server.headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"generated_text": greedy(tiny_pipeline, "What is it?", 8, images=[load_image(IMAGE)]),
                               "details": None}


def test_generate_stream_route_events(server, tiny_pipeline):
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 5, "return_full_text": True}}
    with httpx.stream("POST", f"{server.url}/generate_stream", json=body, headers=server.headers) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
    assert len(events) == 5 and [e["index"] for e in events] == [0, 1, 2, 3, 4]
    assert events[-1]["generated_text"] == "Hello" + greedy(tiny_pipeline, "Hello", 5)

