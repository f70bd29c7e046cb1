"""typical_p, TGI's watermark, top and prompt log-probabilities, and requests that must not reach a decode step."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import WatermarkDetector, WatermarkingConfig
from transformers.generation.logits_process import TypicalLogitsWarper

from coglens.engine import EngineInputError, GenerationRequest, SamplingParams, sample_next
from coglens.engine.engine import _visible_text
from coglens.engine.sampling import filter_typical
from coglens.pipeline import Pipeline
from coglens.processing.image import load_image

IMAGE = "examples/images/red_circle.png"
# entropy 1.2357 nats; |-log p - H| = .543, .032, 1.067, 1.578, 1.983: the 0.3 token is the most typical
PROBS = torch.tensor([0.5, 0.3, 0.1, 0.06, 0.04])


@pytest.fixture(scope="module")
def pipe(tiny_pipeline: Pipeline) -> Pipeline:
    return tiny_pipeline


def _request(pipe: Pipeline, query: str, params: SamplingParams, image: bool = False) -> GenerationRequest:
    x = pipe.build_inputs(query, images=[load_image(IMAGE)] if image else None)
    return GenerationRequest(x["input_ids"], x["token_type_ids"], list(x["images"] or []), params)


def _first_events(pipe: Pipeline, requests: list[GenerationRequest]) -> list:
    """The events of one batched prefill (the requests' first tokens)."""
    for r in requests:
        pipe.engine.add(r)
    events = pipe.engine.step()
    for r in requests:
        pipe.engine.abort(r.request_id)
    pipe.engine.step()
    for r in requests:
        pipe.engine.release(r.request_id)
    return events


@pytest.mark.parametrize(("mass", "kept"), [(0.2, {1}), (0.5, {0, 1}), (0.85, {0, 1, 2})])
def test_typical_p_keeps_what_transformers_keeps(mass, kept):
    logits = PROBS.log()
    ours = set(torch.isfinite(filter_typical(logits, mass)).nonzero().flatten().tolist())
    theirs = TypicalLogitsWarper(mass)(None, logits[None])[0]
    assert ours == kept == set(torch.isfinite(theirs).nonzero().flatten().tolist())
    draws = {sample_next(logits, SamplingParams(do_sample=True, typical_p=mass), torch.tensor([0]),
                         [], torch.Generator().manual_seed(i)).token for i in range(30)}
    assert draws <= kept


def test_typical_p_changes_what_is_sampled():
    params = SamplingParams(do_sample=True, typical_p=0.2, top_logprobs=3)
    draw = sample_next(PROBS.log(), params, torch.tensor([0]), [], torch.Generator().manual_seed(0))
    assert draw.token == 1 and draw.logprob == 0.0 and draw.top == [(1, 0.0)]  # greedy would take token 0


def _watermark_z(pipe: Pipeline, ids: list[int], prompt_last: int) -> tuple[float, bool]:
    config = WatermarkingConfig(greenlist_ratio=0.5, bias=2.0, hashing_key=15485863, seeding_scheme="lefthash",
                                context_width=1)
    detector = WatermarkDetector(pipe.model.config, "cpu", config)
    out = detector(torch.tensor([[prompt_last, *ids]]), return_dict=True)
    return float(out.z_score[0]), bool(out.prediction[0])


def test_watermarked_text_is_detected_by_transformers(pipe):
    request = {mark: _request(pipe, "Write a long story.", SamplingParams(
        max_new_tokens=60, do_sample=True, temperature=1.0, seed=5, ignore_eos=True, watermark=mark))
        for mark in (True, False)}
    results = {mark: pipe.engine.generate([r])[0] for mark, r in request.items()}
    last = int(request[True].input_ids[-1])
    marked_z, marked = _watermark_z(pipe, results[True].token_ids, last)
    plain_z, plain = _watermark_z(pipe, results[False].token_ids, last)
    assert marked and marked_z > 4, marked_z
    assert not plain and plain_z < 2, plain_z


def test_top_logprobs_greedy_match_a_plain_forward(pipe):
    request = _request(pipe, "What is in the image?", SamplingParams(max_new_tokens=2, top_logprobs=5), image=True)
    [event] = _first_events(pipe, [request])
    with torch.no_grad():
        logits = pipe.model(input_ids=request.input_ids[None], token_type_ids=request.token_type_ids[None],
                            images=[request.images]).logits[0, -1]
    values, ids = torch.log_softmax(logits.float(), -1).topk(5)
    assert [i for i, _ in event.top_logprobs] == ids.tolist()
    assert [v for _, v in event.top_logprobs] == pytest.approx(values.tolist(), abs=1e-4)
    assert event.top_logprobs[0] == (event.token_id, pytest.approx(event.logprob))


def test_top_logprobs_sampled_follow_the_filtered_distribution(pipe):
    params = SamplingParams(max_new_tokens=3, do_sample=True, top_k=3, seed=1, top_logprobs=5, ignore_eos=True)
    events = list(pipe.engine.stream(_request(pipe, "Hello", params)))
    for event in events:
        assert len(event.top_logprobs) == 3  # top_k=3 rules the rest out: they are not reported
        assert sum(math.exp(v) for _, v in event.top_logprobs) == pytest.approx(1.0, abs=1e-5)
        assert event.token_id in dict(event.top_logprobs)
        assert dict(event.top_logprobs)[event.token_id] == pytest.approx(event.logprob)
    assert events[0].seconds <= events[-1].seconds
    assert all(e.top_logprobs == [] and e.prompt_logprobs is None for e in pipe.engine.stream(
        _request(pipe, "Hello", SamplingParams(max_new_tokens=2))))  # nothing unless asked


def test_prompt_logprobs_in_a_left_padded_batch_equal_a_plain_forward(pipe):
    params = SamplingParams(max_new_tokens=2, prompt_logprobs=True)
    with_image = _request(pipe, "What is in the image?", params, image=True)
    text = _request(pipe, "A much longer question without any picture, to pad the other row on the left side. " * 3,
                    params)
    assert text.input_ids.numel() != with_image.input_ids.numel() and bool((with_image.token_type_ids == 1).any())
    events = {e.request_id: e for e in _first_events(pipe, [with_image, text])}
    for request in (with_image, text):
        got = events[request.request_id].prompt_logprobs
        with torch.no_grad():
            logits = pipe.model(input_ids=request.input_ids[None], token_type_ids=request.token_type_ids[None],
                                images=[request.images] if request.images else None).logits[0]
        expected = torch.log_softmax(logits.float(), -1)[:-1].gather(
            -1, request.input_ids[1:, None].clamp(0, logits.shape[-1] - 1))[:, 0].tolist()
        vision = (request.token_type_ids == 1).tolist()
        assert len(got) == request.input_ids.numel() and got[0] is None
        for i in range(1, len(got)):
            assert (got[i] is None) == vision[i]
            if not vision[i]:
                assert got[i] == pytest.approx(expected[i - 1], abs=1e-4)


@pytest.mark.parametrize(("fields", "message"), [
    ({"temperature": float("nan")}, "temperature=nan is not a number"),
    ({"top_p": float("inf")}, "top_p=inf is not a number"),
    ({"temperature": True}, "temperature=True is not a number"),
    ({"max_new_tokens": True}, "max_new_tokens=True is not an integer"),
    ({"top_k": 2.5}, "top_k=2.5 is not an integer"),
    ({"seed": 2**70}, "seed="),
    ({"seed": "7"}, "seed='7' is not an integer"),
    ({"typical_p": 0}, "typical_p=0 must be in"),
    ({"top_logprobs": 21}, "top_logprobs=21 must be in"),
    ({"watermark": "yes"}, "watermark='yes' must be true or false"),
    ({"stop": [1]}, "stop must be a string or a list of strings"),
    ({"stop": ["x" * 1001]}, "a stop string has 1001 characters: at most 1000"),
    ({"stop": ["x"] * 65}, "stop has 65 strings: at most 64"),
    ({"stop": 5}, "stop must be a string or a list of strings"),
    ({"stop_token_ids": 5}, "stop_token_ids=5 must be a list of token ids"),
    ({"stop_token_ids": [-1]}, "token ids are integers >= 0"),
    ({"stop_token_ids": [1.5]}, "token ids are integers >= 0"),
    ({"stop_token_ids": list(range(2000))}, "at most 1024"),
])
def test_bad_sampling_values_are_refused_with_their_name(fields, message):
    with pytest.raises(EngineInputError, match=message.replace("(", r"\(").replace("[", r"\[")):
        SamplingParams(**fields)


def test_requests_that_would_break_a_batch_are_refused_at_add(pipe):
    vocab = pipe.model.config.vocab_size
    good = _request(pipe, "What is in the image?", SamplingParams(max_new_tokens=2), image=True)

    def variant(**changes) -> GenerationRequest:
        fields = dict(input_ids=good.input_ids, token_type_ids=good.token_type_ids, images=good.images,
                      params=good.params)
        return GenerationRequest(**{**fields, **changes})

    ids = good.input_ids.clone()
    ids[-1] = vocab
    bad = {
        "outside this model's vocabulary": variant(input_ids=ids),
        "stop_token_ids \\[1024\\] are outside": variant(params=SamplingParams(stop_token_ids=[vocab])),
        "may only hold 0 \\(language\\) and 1": variant(token_type_ids=good.token_type_ids * 2),
        "vision positions but its 0 image": variant(images=[]),
        "image of shape \\(3, 8, 8\\)": variant(images=[torch.zeros(3, 8, 8)]),
        "fill": variant(images=[good.images[0], good.images[0]]),
    }
    for message, request in bad.items():
        with pytest.raises(EngineInputError, match=message):
            pipe.engine.add(request)
    assert not pipe.engine.has_work()
    assert pipe.engine.generate([good])[0].finish_reason == "length"  # the engine was not disturbed


@pytest.mark.parametrize("fields", [{"temperature": 1e-40}, {"repetition_penalty": 1e-39}, {"top_p": 1e-50},
                                    {"typical_p": 1e-50}])
def test_extreme_values_sample_without_breaking_the_step(pipe, fields):
    penalty = {k: v for k, v in fields.items() if k == "repetition_penalty"}
    greedy = pipe.engine.generate([_request(pipe, "Hello there", SamplingParams(
        max_new_tokens=6, ignore_eos=True, **penalty))])[0]
    sampled = pipe.engine.generate([_request(pipe, "Hello there", SamplingParams(
        max_new_tokens=6, do_sample=True, seed=0, ignore_eos=True, **fields))])[0]
    assert all(math.isfinite(x) for x in greedy.logprobs + sampled.logprobs)
    if "temperature" in fields or "top_p" in fields:  # only the likeliest token is left (typical_p keeps the
        assert sampled.token_ids == greedy.token_ids  # most typical one, not the likeliest)


def test_stop_string_hold_back():
    assert _visible_text("hello wor", ["world"]) == ("hello ", False)
    assert _visible_text("abab", ["abac"]) == ("ab", False)  # the longest prefix of the stop that ends the text
    assert _visible_text("xaa", ["aab"]) == ("x", False)
    assert _visible_text("xa", ["bc", "ab"]) == ("x", False)
    assert _visible_text("say world now", ["world"]) == ("say ", True)
    assert _visible_text("abc", ["abc" + "d" * 5]) == ("", False)
    assert _visible_text("abc", ["zzz"]) == ("abc", False)
