"""The official openai SDK against a running server: answers equal the engine's own greedy output."""

from __future__ import annotations

import httpx
import pytest
from openai import BadRequestError, OpenAI
from serve_helpers import API_KEY, IMAGE, data_url, greedy, greedy_params

from coglens.engine import SamplingParams
from coglens.processing.image import load_image


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


def _user(text: str, image: str | None = None) -> dict:
    if image is None:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [{"type": "text", "text": text},
                                        {"type": "image_url", "image_url": {"url": image}}]}


def test_models_lists_the_served_names(client):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "tiny:cogvlm2" and "cogvlm2" in ids


def test_greedy_answer_and_usage_equal_the_engine(client, tiny_pipeline):
    response = client.chat.completions.create(model="tiny:cogvlm2", messages=[_user("Describe the scene.")],
                                              max_tokens=12, temperature=0)
    expected = tiny_pipeline.ask("Describe the scene.", params=greedy_params(12))
    assert response.choices[0].message.content == expected.text
    assert response.choices[0].finish_reason == "length"
    assert response.usage.prompt_tokens == expected.prompt_tokens
    assert response.usage.completion_tokens == 12
    assert response.usage.total_tokens == expected.prompt_tokens + 12


def test_image_part_counts_image_tokens_in_usage(client, tiny_pipeline):
    url = data_url(IMAGE.read_bytes(), "image/png")
    response = client.chat.completions.create(model="tiny:cogvlm2", messages=[_user("What is it?", url)],
                                              max_tokens=10, temperature=0)
    image = load_image(IMAGE)
    inputs = tiny_pipeline.build_inputs("What is it?", images=[image])
    assert response.usage.prompt_tokens == inputs["input_ids"].numel()
    assert (inputs["token_type_ids"] == 1).sum() == tiny_pipeline.config.num_image_tokens  # the image is counted
    assert response.choices[0].message.content == greedy(tiny_pipeline, "What is it?", 10, images=[image])


def test_stream_chunks_join_to_the_greedy_answer_and_usage_comes_last(client, tiny_pipeline):
    stream = client.chat.completions.create(model="tiny:cogvlm2", messages=[_user("Tell me more.")], max_tokens=15,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == greedy(tiny_pipeline, "Tell me more.", 15)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 15
    assert chunks[-1].usage.prompt_tokens == tiny_pipeline.build_inputs("Tell me more.")["input_ids"].numel()


def test_first_token_arrives_while_the_request_still_runs(client, server):
    stream = client.chat.completions.create(model="tiny:cogvlm2", messages=[_user("Go on.")], max_tokens=400,
                                            temperature=0, stream=True, extra_body={"ignore_eos": True})
    running_at_first_text = None
    count = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and running_at_first_text is None:
            running_at_first_text = server.app.state.scheduler.in_flight()
        count += 1
    assert running_at_first_text == 1  # generation was under way when the first token reached us
    assert count > 100


def test_stop_string_ends_with_finish_reason_stop(client, tiny_pipeline):
    full = greedy(tiny_pipeline, "Describe the scene.", 12)
    stop = full[4:7]
    response = client.chat.completions.create(model="tiny:cogvlm2", messages=[_user("Describe the scene.")],
                                              max_tokens=12, temperature=0, stop=[stop])
    assert response.choices[0].finish_reason == "stop"
    assert response.choices[0].message.content == full[: full.index(stop)]


def test_system_message_is_prepended_to_the_query(client, tiny_pipeline):
    messages = [{"role": "system", "content": "Be brief."}, _user("Describe the scene.")]
    response = client.chat.completions.create(model="tiny:cogvlm2", messages=messages, max_tokens=8, temperature=0)
    assert response.choices[0].message.content == greedy(tiny_pipeline, "Be brief.\nDescribe the scene.", 8)


def test_history_with_images_in_earlier_turns_uses_the_multi_image_layout(client, tiny_pipeline):
    red = data_url(IMAGE.read_bytes(), "image/png")
    blue_path = IMAGE.parent / "blue_square.png"
    blue = data_url(blue_path.read_bytes(), "image/png")
    messages = [_user("First?", red), {"role": "assistant", "content": "A red circle."}, _user("And now?", blue)]
    response = client.chat.completions.create(model="tiny:cogvlm2", messages=messages, max_tokens=8, temperature=0)
    expected = greedy(tiny_pipeline, "And now?", 8, images=[load_image(blue_path)],
                      history=[("First?", "A red circle.", load_image(IMAGE))], allow_multiple_images=True)
    assert response.choices[0].message.content == expected


def test_one_image_in_an_earlier_turn_keeps_the_original_layout(client, tiny_pipeline):
    url = data_url(IMAGE.read_bytes(), "image/png")
    messages = [_user("First?", url), {"role": "assistant", "content": "A circle."}, _user("Colour?")]
    response = client.chat.completions.create(model="tiny:cogvlm2", messages=messages, max_tokens=8, temperature=0)
    expected = greedy(tiny_pipeline, "Colour?", 8, images=[load_image(IMAGE)], history=[("First?", "A circle.")])
    assert response.choices[0].message.content == expected


def test_n_seeded_samples_are_reproducible(client):
    def ask():
        return client.chat.completions.create(model="tiny:cogvlm2", messages=[_user("Hi")], max_tokens=6,
                                              temperature=1.0, seed=7, n=2)

    first, second = ask(), ask()
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]
    assert [c.index for c in first.choices] == [0, 1]
    assert first.usage.completion_tokens == 12


def test_penalties_and_sampling_fields_are_accepted(client):
    response = client.chat.completions.create(
        model="tiny:cogvlm2", messages=[_user("Hi")], max_tokens=5, temperature=0.7, top_p=0.9, seed=1,
        presence_penalty=1.0, frequency_penalty=0.5,
        extra_body={"top_k": 5, "repetition_penalty": 1.1}, user="u-1", metadata={"team": "a"})
    assert response.usage.completion_tokens == 5


def _engine_events(pipe, query: str, params: SamplingParams) -> list:
    return [e for e in pipe.engine.stream(pipe.request(query, params=params)) if e.token_id is not None]


def test_logprobs_round_trip_with_top_logprobs(client, tiny_pipeline):
    response = client.chat.completions.create(model="tiny:cogvlm2", messages=[_user("Describe the scene.")],
                                              max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    events = _engine_events(tiny_pipeline, "Describe the scene.", SamplingParams(max_new_tokens=5, top_logprobs=3))
    decode = tiny_pipeline.tokenizer.decode
    content = response.choices[0].logprobs.content
    assert [c.token for c in content] == [decode([e.token_id]) for e in events]
    assert [c.logprob for c in content] == pytest.approx([e.logprob for e in events], abs=1e-5)
    assert all(c.bytes == (None if "\ufffd" in c.token else list(c.token.encode("utf-8"))) for c in content)
    assert [[t.token for t in c.top_logprobs] for c in content] == [
        [decode([i]) for i, _ in e.top_logprobs] for e in events]
    assert [t.logprob for c in content for t in c.top_logprobs] == pytest.approx(
        [lp for e in events for _, lp in e.top_logprobs], abs=1e-5)
    assert all(c.top_logprobs[0].logprob == pytest.approx(c.logprob) for c in content)  # greedy takes the top one

    stream = client.chat.completions.create(model="tiny:cogvlm2", messages=[_user("Describe the scene.")],
                                            max_tokens=5, temperature=0, logprobs=True, top_logprobs=3, stream=True)
    streamed = [entry for chunk in stream if chunk.choices and chunk.choices[0].logprobs
                for entry in chunk.choices[0].logprobs.content]
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in content]


def test_logprobs_without_top_logprobs_have_empty_alternatives(client):
    response = client.chat.completions.create(model="tiny:cogvlm2", messages=[_user("Hi")], max_tokens=3,
                                              temperature=0, logprobs=True)
    assert [c.top_logprobs for c in response.choices[0].logprobs.content] == [[], [], []]
    plain = client.chat.completions.create(model="tiny:cogvlm2", messages=[_user("Hi")], max_tokens=3, temperature=0)
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize(("field", "value"), [
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("tool_choice", "auto"),
    ("response_format", {"type": "json_object"}),
    ("logit_bias", {"50": 10}),
    ("parallel_tool_calls", True),
    ("top_logprobs", 2),  # without logprobs: true
])
def test_fields_the_server_does_not_implement_are_refused_by_name(client, field, value):
    with pytest.raises(BadRequestError) as caught:
        client.chat.completions.create(model="tiny:cogvlm2", messages=[_user("Hi")], max_tokens=2,
                                       extra_body={field: value})
    assert caught.value.body["param"] == field
    assert field in caught.value.body["message"]


def test_off_values_of_refused_fields_are_accepted(client):
    response = client.chat.completions.create(model="tiny:cogvlm2", messages=[_user("Hi")], max_tokens=2,
                                              response_format={"type": "text"}, tools=None,
                                              extra_body={"logit_bias": {}, "tool_choice": "none"})
    assert response.usage.completion_tokens == 2


def test_missing_key_is_a_401_in_openai_shape(server):
    response = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": [_user("hi")]})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{server.url}/health").status_code == 200  # /health needs no key

