"""OpenAI's legacy /v1/completions with the official openai client: text continued under the base template."""

from __future__ import annotations

import pytest
from openai import BadRequestError, OpenAI
from serve_helpers import API_KEY

from coglens.engine import SamplingParams

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


def _engine(pipe, params: SamplingParams, prompt: str = PROMPT) -> list:
    request = pipe.request(prompt, params=params, template="base")
    return [e for e in pipe.engine.stream(request)]


def test_greedy_completion_is_the_base_template_continuation(client, tiny_pipeline):
    response = client.completions.create(model="tiny:cogvlm2", prompt=PROMPT, max_tokens=7, temperature=0)
    expected = tiny_pipeline.ask(PROMPT, params=SamplingParams(max_new_tokens=7), template="base")
    assert response.object == "text_completion"
    assert response.choices[0].text == expected.text
    assert response.choices[0].finish_reason == "length"
    assert response.usage.prompt_tokens == expected.prompt_tokens
    assert response.usage.completion_tokens == 7


def test_default_max_tokens_is_16_and_a_one_string_list_is_a_prompt(client):
    response = client.completions.create(model="tiny:cogvlm2", prompt=[PROMPT], temperature=0,
                                         extra_body={"ignore_eos": True})
    assert response.usage.completion_tokens == 16


def test_logprobs_in_the_legacy_shape_with_echo(client, tiny_pipeline):
    response = client.completions.create(model="tiny:cogvlm2", prompt=PROMPT, max_tokens=4, temperature=0,
                                         logprobs=2, echo=True)
    events = _engine(tiny_pipeline, SamplingParams(max_new_tokens=4, top_logprobs=2, prompt_logprobs=True))
    generated = [e for e in events if e.token_id is not None]
    decode = tiny_pipeline.tokenizer.decode
    prompt_ids = tiny_pipeline.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    choice = response.choices[0]
    assert choice.text == PROMPT + "".join(e.text for e in generated)
    logprobs = choice.logprobs
    assert logprobs.tokens == [decode([i]) for i in prompt_ids] + [decode([e.token_id]) for e in generated]
    n_prompt = len(prompt_ids)
    assert logprobs.token_logprobs[n_prompt:] == pytest.approx([e.logprob for e in generated], abs=1e-5)
    assert logprobs.token_logprobs[:n_prompt] == pytest.approx(events[0].prompt_logprobs[-n_prompt:], abs=1e-5)
    assert logprobs.top_logprobs[:n_prompt] == [None] * n_prompt
    assert [list(top) for top in logprobs.top_logprobs[n_prompt:]] == [
        [decode([i]) for i, _ in e.top_logprobs] for e in generated]
    lengths = [len(t) for t in logprobs.tokens]
    assert logprobs.text_offset == [sum(lengths[:i]) for i in range(len(lengths))]


def test_stream_joins_to_the_answer_and_ends_with_usage(client, tiny_pipeline):
    expected = tiny_pipeline.ask(PROMPT, params=SamplingParams(max_new_tokens=6), template="base")
    chunks = list(client.completions.create(model="tiny:cogvlm2", prompt=PROMPT, max_tokens=6, temperature=0,
                                            stream=True, echo=True, logprobs=0,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == PROMPT + expected.text
    tokens = [lp for c in chunks if c.choices and c.choices[0].logprobs
              for lp in c.choices[0].logprobs.token_logprobs]
    assert tokens[-6:] == pytest.approx(expected.logprobs, abs=1e-5)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6


def test_best_of_returns_the_n_likeliest(client):
    response = client.completions.create(model="tiny:cogvlm2", prompt=PROMPT, max_tokens=4, temperature=1.0,
                                         best_of=3, n=2, logprobs=0, seed=3)
    totals = [sum(c.logprobs.token_logprobs) for c in response.choices]
    assert len(totals) == 2 and totals[0] >= totals[1]
    assert response.usage.completion_tokens == 12  # all three were generated


@pytest.mark.parametrize(("extra", "param", "words"), [
    ({"prompt": [1, 2, 3]}, "prompt", "token-id"),
    ({"prompt": ["a", "b"]}, "prompt", "one prompt"),
    ({"suffix": "end"}, "suffix", "suffix"),
    ({"logprobs": 6}, "logprobs", "5"),
    ({"best_of": 1, "n": 2}, "best_of", "n=2"),
    ({"best_of": 2, "stream": True}, "best_of", "streamed"),
    ({"echo": "yes"}, "echo", "boolean"),
])
def test_bad_fields_are_400s_naming_the_field(client, extra, param, words):
    body = {"model": "tiny:cogvlm2", "prompt": PROMPT, "max_tokens": 2, **extra}
    with pytest.raises(BadRequestError) as caught:
        client.post("/completions", body=body, cast_to=object)
    assert caught.value.body["param"] == param
    assert words in caught.value.body["message"]
