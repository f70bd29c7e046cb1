"""Generation on the built-in tiny model: transformers' generate() and coglens.engine agree, and every option works."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import TextIteratorStreamer

from coglens.engine import EngineInputError, GenerationRequest, SamplingParams
from coglens.pipeline import Pipeline

IMAGE = "examples/images/red_circle.png"


@pytest.fixture(scope="module")
def pipe(tiny_pipeline: Pipeline) -> Pipeline:
    return tiny_pipeline


def _prompt(pipe, query="What is in the image?", image=True):
    from coglens.processing.image import load_image

    return pipe.build_inputs(query, images=[load_image(IMAGE)] if image else None)


def _hf_generate(pipe, inputs_list, **kwargs):
    """Left-pad several prompts by hand and run transformers' generate()."""
    width = max(x["input_ids"].numel() for x in inputs_list)
    ids = torch.zeros(len(inputs_list), width, dtype=torch.long)
    types, mask = torch.zeros_like(ids), torch.zeros_like(ids)
    for row, x in enumerate(inputs_list):
        n = x["input_ids"].numel()
        ids[row, width - n:], types[row, width - n:], mask[row, width - n:] = x["input_ids"], x["token_type_ids"], 1
    images = [list(x["images"] or []) for x in inputs_list]
    with torch.no_grad():
        out = pipe.model.generate(input_ids=ids, token_type_ids=types, attention_mask=mask, images=images, **kwargs)
    return out[:, width:]


def _engine(pipe, inputs_list, params):
    reqs = [GenerationRequest(x["input_ids"], x["token_type_ids"], list(x["images"] or []), params)
            for x in inputs_list]
    return pipe.engine.generate(reqs)


def test_greedy_generate_equals_engine_batched_and_alone(pipe):
    prompts = [_prompt(pipe), _prompt(pipe, "Describe it in detail please.", image=False), _prompt(pipe, "Color?")]
    hf = _hf_generate(pipe, prompts, max_new_tokens=12, do_sample=False, eos_token_id=None)
    results = _engine(pipe, prompts, SamplingParams(max_new_tokens=12, ignore_eos=True))
    for row, result in enumerate(results):
        assert result.token_ids == hf[row].tolist()
        alone = _hf_generate(pipe, [prompts[row]], max_new_tokens=12, do_sample=False, eos_token_id=None)
        assert alone[0].tolist() == result.token_ids  # left padding changes nothing


def test_repetition_penalty_same_in_both_paths(pipe):
    prompt = [_prompt(pipe)]
    plain = _hf_generate(pipe, prompt, max_new_tokens=16, do_sample=False, eos_token_id=None)[0].tolist()
    # below 1 the penalty rewards seen tokens: random weights that never repeat still change their answer
    hf = _hf_generate(pipe, prompt, max_new_tokens=16, do_sample=False, repetition_penalty=0.2,
                      eos_token_id=None)[0].tolist()
    [ours] = _engine(pipe, prompt, SamplingParams(max_new_tokens=16, repetition_penalty=0.2, ignore_eos=True))
    assert ours.token_ids == hf
    assert hf != plain  # the penalty really changed the answer


def test_several_eos_ids_and_max_new_tokens(pipe):
    prompt = [_prompt(pipe)]
    greedy = _hf_generate(pipe, prompt, max_new_tokens=10, do_sample=False, eos_token_id=None)[0].tolist()
    stop_at = greedy[3]
    first = greedy.index(stop_at)
    out = _hf_generate(pipe, prompt, max_new_tokens=10, do_sample=False, eos_token_id=[999_999 % 50, stop_at])
    assert out[0, : first + 1].tolist() == greedy[: first + 1]
    [ours] = _engine(pipe, prompt, SamplingParams(max_new_tokens=10, stop_token_ids=[stop_at]))
    assert ours.token_ids == greedy[: first + 1] and ours.finish_reason == "stop"
    [short] = _engine(pipe, prompt, SamplingParams(max_new_tokens=3, ignore_eos=True))
    assert len(short.token_ids) == 3 and short.finish_reason == "length"


def test_stop_strings_in_both_paths(pipe):
    prompt = [_prompt(pipe)]
    greedy = _hf_generate(pipe, prompt, max_new_tokens=12, do_sample=False, eos_token_id=None)[0].tolist()
    text = pipe.tokenizer.decode(greedy, skip_special_tokens=True)
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert stop and stop in text
    out = _hf_generate(pipe, prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, stop_strings=[stop],
                       tokenizer=pipe.tokenizer)
    hf_text = pipe.tokenizer.decode(out[0], skip_special_tokens=True)
    assert stop in hf_text and len(out[0]) <= len(greedy)
    [ours] = _engine(pipe, prompt, SamplingParams(max_new_tokens=12, stop=[stop], ignore_eos=True))
    assert ours.finish_reason == "stop"
    assert ours.text == text[: text.index(stop)]  # the answer ends right before the stop string


def test_text_iterator_streamer(pipe):
    x = _prompt(pipe)
    streamer = TextIteratorStreamer(pipe.tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(input_ids=x["input_ids"][None], token_type_ids=x["token_type_ids"][None],
                  attention_mask=x["attention_mask"][None], images=[x["images"]], max_new_tokens=10,
                  do_sample=False, eos_token_id=None, streamer=streamer)
    thread = threading.Thread(target=pipe.model.generate, kwargs=kwargs)
    thread.start()
    pieces = list(streamer)
    thread.join()
    expected = _hf_generate(pipe, [x], max_new_tokens=10, do_sample=False, eos_token_id=None)[0]
    assert len(pieces) > 1 and "".join(pieces) == pipe.tokenizer.decode(expected, skip_special_tokens=True)


def test_sampling_generate_seeded(pipe):
    x = [_prompt(pipe)]
    torch.manual_seed(0)
    a = _hf_generate(pipe, x, max_new_tokens=10, do_sample=True, temperature=1.5, top_k=50, top_p=0.9,
                     eos_token_id=None)
    torch.manual_seed(0)
    b = _hf_generate(pipe, x, max_new_tokens=10, do_sample=True, temperature=1.5, top_k=50, top_p=0.9,
                     eos_token_id=None)
    assert torch.equal(a, b)


def test_engine_sampling_is_reproducible_per_request(pipe):
    x = _prompt(pipe)
    params = SamplingParams(max_new_tokens=10, do_sample=True, temperature=1.3, top_p=0.95, top_k=40, seed=7,
                            ignore_eos=True)
    [alone] = _engine(pipe, [x], params)
    # the same seeded request batched with others (which draw from their own generators) gives the same tokens
    other = SamplingParams(max_new_tokens=6, do_sample=True, temperature=2.0, seed=1, ignore_eos=True)
    reqs = [GenerationRequest(x["input_ids"], x["token_type_ids"], list(x["images"]), other),
            GenerationRequest(x["input_ids"], x["token_type_ids"], list(x["images"]), params)]
    together = pipe.engine.generate(reqs)
    assert together[1].token_ids == alone.token_ids
    [reseeded] = _engine(pipe, [x], SamplingParams(**{**params.__dict__, "seed": 8}))
    assert reseeded.token_ids != alone.token_ids


def test_engine_streaming_events(pipe):
    events = list(pipe.stream("Describe the image.", images=[IMAGE],
                              params=SamplingParams(max_new_tokens=8, ignore_eos=True)))
    assert [e.index for e in events] == list(range(8))
    assert events[-1].finish_reason == "length" and all(e.finish_reason is None for e in events[:-1])
    result = pipe.ask("Describe the image.", images=[IMAGE], params=SamplingParams(max_new_tokens=8, ignore_eos=True))
    assert "".join(e.text for e in events) == result.text
    assert [e.token_id for e in events] == result.token_ids


def test_engine_abort_and_bad_requests(pipe):
    x = _prompt(pipe)
    stream = pipe.engine.stream(GenerationRequest(x["input_ids"], x["token_type_ids"], list(x["images"]),
                                                  SamplingParams(max_new_tokens=50, ignore_eos=True)))
    next(stream)
    stream.close()  # a client that goes away
    assert pipe.engine.num_running() == 0 and not pipe.engine.has_work()
    with pytest.raises(EngineInputError, match="max_new_tokens"):
        pipe.engine.add(GenerationRequest(x["input_ids"], x["token_type_ids"], list(x["images"]),
                                          SamplingParams(max_new_tokens=10**6)))
    with pytest.raises(EngineInputError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(EngineInputError, match="stop strings must not be empty"):
        SamplingParams(stop=[""])  # "" is in every text: it would end every answer before it starts


def test_engine_stream_stops_when_asked_and_refuses_before_any_event(pipe):
    x = _prompt(pipe)
    stop = threading.Event()
    request = GenerationRequest(x["input_ids"], x["token_type_ids"], list(x["images"]),
                                SamplingParams(max_new_tokens=50, ignore_eos=True))
    events = []
    for event in pipe.engine.stream(request, stop=stop):
        events.append(event)
        if len(events) == 3:
            stop.set()  # what the chat's Ctrl-C does
    assert [e.finish_reason for e in events] == [None, None, None, "abort"]
    assert not pipe.engine.has_work()
    with pytest.raises(EngineInputError, match="max_new_tokens=100000 does not fit"):
        pipe.engine.stream(GenerationRequest(x["input_ids"], x["token_type_ids"], list(x["images"]),
                                             SamplingParams(max_new_tokens=100_000)))  # at the call, not on next()


@pytest.mark.parametrize("variant", ["cogvlm", "cogvlm2"])
def test_incremental_text_equals_decoding_the_whole_answer(variant, tiny_pipelines):
    """The engine detokenises a short window per token; the result must equal decoding all tokens at once."""
    pipe = tiny_pipelines(variant)
    params = SamplingParams(max_new_tokens=120, do_sample=True, temperature=1.5, seed=3, ignore_eos=True)
    events = list(pipe.stream("Tell me a long story.", params=params))
    ids = [e.token_id for e in events]
    assert "".join(e.text for e in events) == pipe.tokenizer.decode(ids, skip_special_tokens=True)
