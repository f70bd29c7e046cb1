"""huggingface_hub's InferenceClient (TGI protocol) and raw TGI bodies, checked against the engine."""

from __future__ import annotations

import json

import httpx
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import ValidationError
from serve_helpers import API_KEY, IMAGE, data_url, greedy, greedy_params

from coglens.engine import SamplingParams
from coglens.processing.image import load_image


@pytest.fixture(scope="module")
def client(server) -> InferenceClient:
    return InferenceClient(model=server.url, token=API_KEY, provider="hf-inference")


def test_text_generation_equals_the_engine(client, tiny_pipeline):
    assert client.text_generation("Describe the scene.", max_new_tokens=10) == greedy(
        tiny_pipeline, "Describe the scene.", 10)


def test_chat_completion_of_a_client_pointed_at_the_url(server, tiny_pipeline):
    """huggingface_hub sends model="dummy" to a URL, as TGI (one model, name ignored) expects."""
    client = InferenceClient(base_url=f"{server.url}/v1", api_key=API_KEY)
    reply = client.chat_completion([{"role": "user", "content": "Describe the scene."}], max_tokens=8, temperature=0)
    assert reply.choices[0].message.content == greedy(tiny_pipeline, "Describe the scene.", 8)


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


def _seed_body(**parameters: object) -> dict:
    """The MindIE guide's TGI body (seed 002), with an image and ``parameters`` changed."""
    return {"inputs": [{"type": "text", "text": "What is it?"},
                       {"type": "image_url", "image_url": data_url(IMAGE.read_bytes(), "image/png")}],
            "parameters": {"max_new_tokens": 8, "details": False, "decoder_input_details": False,
                           "repetition_penalty": 1.0, "return_full_text": False, "seed": None, "truncate": None,
                           "watermark": False, **parameters}}


def test_generate_route_with_typed_parts_and_seed_fields(server, tiny_pipeline):
    body = _seed_body(do_sample=False, typical_p=0.5)  # an explicit do_sample: false is greedy, warpers or not
    response = httpx.post(f"{server.url}/generate", content=json.dumps(body), headers=server.headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"generated_text": greedy(tiny_pipeline, "What is it?", 8, images=[load_image(IMAGE)]),
                               "details": None}


def test_seed_body_typical_p_and_watermark_sample_as_the_engine_does(server, tiny_pipeline):
    body = _seed_body(typical_p=0.5, watermark=True, seed=11)
    response = httpx.post(f"{server.url}/generate", json=body, headers=server.headers)
    assert response.status_code == 200, response.text
    params = SamplingParams(max_new_tokens=8, do_sample=True, typical_p=0.5, watermark=True, seed=11)
    expected = tiny_pipeline.ask("What is it?", params=params, images=[load_image(IMAGE)]).text
    assert response.json()["generated_text"] == expected
    unmarked = SamplingParams(max_new_tokens=8, do_sample=True, typical_p=0.5, seed=11)
    assert expected != tiny_pipeline.ask("What is it?", params=unmarked, images=[load_image(IMAGE)]).text


def test_grammar_is_refused_by_name(server):
    response = httpx.post(f"{server.url}/generate", json=_seed_body(grammar={"type": "json", "value": {}}),
                          headers=server.headers)
    assert response.status_code == 422
    assert response.json()["error"].startswith("parameters.grammar: ") and "grammar" in response.json()["error"]


def test_an_adapter_id_on_a_server_without_adapters_is_a_404_saying_so(server):
    response = httpx.post(f"{server.url}/generate", json=_seed_body(adapter_id="456"), headers=server.headers)
    assert response.status_code == 404, response.text
    assert response.json()["error"] == ("parameters.adapter_id='456' is not a loaded adapter; this server has no "
                                        "adapters (start it with --adapter NAME=PATH)")


def test_top_n_tokens_and_decoder_input_details(client, tiny_pipeline):
    out = client.text_generation("Hello", max_new_tokens=4, details=True, top_n_tokens=3,
                                 decoder_input_details=True)
    params = SamplingParams(max_new_tokens=4, top_logprobs=3, prompt_logprobs=True)
    request = tiny_pipeline.request("Hello", params=params)
    events = [e for e in tiny_pipeline.engine.stream(request) if e.token_id is not None]
    decode = tiny_pipeline.tokenizer.decode
    top_tokens = out.details.top_tokens  # huggingface_hub leaves these nested tokens as dicts
    assert [[t["id"] for t in top] for top in top_tokens] == [[i for i, _ in e.top_logprobs] for e in events]
    assert [[t["text"] for t in top] for top in top_tokens] == [
        [decode([i]) for i, _ in e.top_logprobs] for e in events]
    assert [t["logprob"] for top in top_tokens for t in top] == pytest.approx(
        [lp for e in events for _, lp in e.top_logprobs], abs=1e-5)
    prompt_ids = request.input_ids.tolist()
    assert [t.id for t in out.details.prefill] == prompt_ids
    assert [t.text for t in out.details.prefill] == [decode([i]) for i in prompt_ids]
    assert out.details.prefill[0].logprob is None
    assert [t.logprob for t in out.details.prefill[1:]] == pytest.approx(events[0].prompt_logprobs[1:], abs=1e-5)

    stream = list(client.text_generation("Hello", max_new_tokens=4, stream=True, details=True, top_n_tokens=3))
    assert [[t.id for t in e.top_tokens] for e in stream] == [[i for i, _ in e.top_logprobs] for e in events]


def test_best_of_returns_the_likeliest_sequence_and_the_others(client, tiny_pipeline):
    out = client.text_generation("Hello", max_new_tokens=5, details=True, best_of=2, do_sample=True)
    sequences = [out.details, *out.details.best_of_sequences]
    assert len(sequences) == 2
    totals = [sum(t.logprob for t in seq.tokens) for seq in sequences]
    assert totals[0] == max(totals)
    assert out.generated_text == "".join(t.text for t in out.details.tokens)


@pytest.mark.parametrize(("parameters", "stream", "words"), [
    ({"best_of": 2}, False, "needs sampling"),
    ({"best_of": 2, "do_sample": True, "seed": 1}, False, "seed"),
    ({"best_of": 2, "do_sample": True}, True, "streaming"),
    ({"decoder_input_details": True}, True, "streaming"),
    ({"top_n_tokens": 6}, False, "top_n_tokens"),
    ({"typical_p": 1.0}, False, "typical_p"),
    ({"temperature": float("nan")}, False, "not a number"),
    ({"do_sample": "yes"}, False, "do_sample"),
    ({"max_new_tokens": True}, False, "max_new_tokens"),
    ({"unknown_knob": 1}, False, "unknown_knob"),
])
def test_tgi_parameter_errors_name_the_field(server, parameters, stream, words):
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 3, **parameters}, "stream": stream}
    response = httpx.post(f"{server.url}/generate", content=json.dumps(body), headers=server.headers)
    assert response.status_code == 422, response.text
    assert words in response.json()["error"]


def test_truncate_keeps_the_last_text_tokens(server, tiny_pipeline):
    prompt = "one two three four five six seven eight nine ten"
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 4, "truncate": 3, "details": True,
                                             "decoder_input_details": True}}
    response = httpx.post(f"{server.url}/generate", json=body, headers=server.headers)
    assert response.status_code == 200, response.text
    full = tiny_pipeline.build_inputs(prompt)["input_ids"].tolist()
    assert [t["id"] for t in response.json()["details"]["prefill"]] == [full[0], *full[-3:]]  # [bos] stays


def test_info_reports_the_model_and_limits(client, server):
    info = client.get_endpoint_info()
    assert info["model_id"] == "tiny:cogvlm2"
    assert info["model_device_type"] == "cpu" and info["model_dtype"] == "torch.float32"
    limits = server.app.state.service.limits
    context = server.app.state.pipeline.config.max_position_embeddings
    assert info["max_total_tokens"] == context and info["max_input_tokens"] < context
    assert info["max_best_of"] == limits.max_n and info["max_concurrent_requests"] == limits.max_queue
    assert {"max_stop_sequences", "validation_workers", "version", "router"} <= set(info)


def test_generate_stream_route_events(server, tiny_pipeline):
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 5, "return_full_text": True}}
    with httpx.stream("POST", f"{server.url}/generate_stream", json=body, headers=server.headers) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
    assert len(events) == 5 and [e["index"] for e in events] == [0, 1, 2, 3, 4]
    assert events[-1]["generated_text"] == "Hello" + greedy(tiny_pipeline, "Hello", 5)



def test_generate_stream_route_refuses_best_of_and_prefill_details(server):
    for parameters in ({"best_of": 2, "do_sample": True}, {"decoder_input_details": True}):
        response = httpx.post(f"{server.url}/generate_stream", headers=server.headers,
                              json={"inputs": "hi", "parameters": parameters})
        assert response.status_code == 422
        assert "streaming" in response.json()["error"]


def test_a_body_of_neither_protocol_is_a_plain_400(server):
    response = httpx.post(f"{server.url}/generate", json={"parameters": {}}, headers=server.headers)
    assert response.status_code == 400
    assert "inputs" in response.json()["error"]
