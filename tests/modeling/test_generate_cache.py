"""``generate()`` reuses its KV cache on the installed transformers: the vision tower runs once per image and each
decode step feeds one token per row, whatever generation mode. A renamed cache argument in transformers (5.24
renamed ``past_key_values`` to ``cache``) once made every step re-feed the whole sequence; these tests catch that.
"""

from __future__ import annotations

import logging
import threading
import warnings

import pytest
import torch
from testkit import load_goldens, parity_folder
from transformers import TextIteratorStreamer

from coglens import CogvlmForCausalLM

NEW_TOKENS = 5


@pytest.fixture(scope="module")
def setup():
    return CogvlmForCausalLM.from_pretrained(parity_folder("cogvlm2")), load_goldens("cogvlm2")


class Recorder:
    """Counts vision-tower calls and records how many tokens each language-model forward was fed."""

    def __init__(self, model):
        self.vision_images: list[int] = []
        self.fed: list[tuple[int, int]] = []
        self._handles = [
            model.model.vision.register_forward_hook(lambda m, args, out: self.vision_images.append(args[0].shape[0])),
            model.model.layers[0].register_forward_hook(lambda m, args, out: self.fed.append(tuple(args[0].shape[:2]))),
        ]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()


def _single(g):
    return {"input_ids": g["single/input_ids"], "token_type_ids": g["single/token_type_ids"],
            "attention_mask": g["single/attention_mask"], "images": [[g["single/images"][0]]]}


def _batch(g):
    return {"input_ids": g["batch_left_pad/input_ids"], "token_type_ids": g["batch_left_pad/token_type_ids"],
            "attention_mask": g["batch_left_pad/attention_mask"],
            "images": [[img] for img in g["batch_left_pad/images"]]}


def _never_eos(model, **kwargs):
    return {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "pad_token_id": 0, **kwargs}


def _assert_cached(rec: Recorder, batch: int, prompt_len: int, images: int) -> None:
    assert sum(rec.vision_images) == images, f"vision tower ran on {rec.vision_images} images"
    assert len(rec.vision_images) == 1
    assert rec.fed[0] == (batch, prompt_len)
    # the last token is sampled from the last forward, so N new tokens take N forwards in all
    assert rec.fed[1:] == [(batch, 1)] * (NEW_TOKENS - 1), rec.fed


@pytest.mark.parametrize("mode", ["greedy", "sample", "logits"])
@torch.no_grad()
def test_generate_encodes_the_image_once_and_feeds_one_token_per_step(setup, mode):
    model, g = setup
    inputs = _single(g)
    extra = {"greedy": {"do_sample": False},
             "sample": {"do_sample": True, "top_k": 5},
             "logits": {"do_sample": False, "output_logits": True, "return_dict_in_generate": True}}[mode]
    if mode == "sample":
        torch.manual_seed(0)
    with Recorder(model) as rec:
        out = model.generate(**inputs, **_never_eos(model, **extra))
    _assert_cached(rec, 1, inputs["input_ids"].shape[1], images=1)
    if mode == "logits":
        assert len(out.logits) == NEW_TOKENS
        assert out.sequences.shape[1] == inputs["input_ids"].shape[1] + NEW_TOKENS


@torch.no_grad()
def test_left_padded_batch_reuses_the_cache_and_matches_the_fixture(setup):
    model, g = setup
    inputs = _batch(g)
    with Recorder(model) as rec:
        out = model.generate(**inputs, **_never_eos(model, do_sample=False))
    _assert_cached(rec, inputs["input_ids"].shape[0], inputs["input_ids"].shape[1], images=2)
    # the cached path decodes what THUDM's code decoded (first tokens of the recorded greedy batch)
    prompt_len = inputs["input_ids"].shape[1]
    assert torch.equal(g["greedy_batch/sequences"][:, :prompt_len], inputs["input_ids"])
    assert torch.equal(out[:, prompt_len:], g["greedy_batch/new_tokens"][:, :NEW_TOKENS])


def test_streamer_reuses_the_cache(setup, tmp_path):
    model, g = setup
    tokenizer = _tokenizer_for(model, tmp_path)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
    with Recorder(model) as rec:
        worker = threading.Thread(
            target=lambda: model.generate(**_single(g), streamer=streamer, **_never_eos(model, do_sample=False))
        )
        worker.start()
        text = "".join(streamer)
        worker.join()
    _assert_cached(rec, 1, g["single/input_ids"].shape[1], images=1)
    assert isinstance(text, str)


def test_no_deprecation_warning_of_ours_reaches_the_user(setup):
    """transformers' logger does not propagate and says each warning once per process: listen on it directly,
    with its once-cache cleared, and on Python's warnings too."""
    model, g = setup
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    hf_logger = logging.getLogger("transformers")
    logging.Logger.warning_once.cache_clear()  # transformers' lru_cache'd warning_once
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.generate(**_single(g), **_never_eos(model, do_sample=False))
            model(**_single(g))
            model(**_single(g), past_key_values=None, use_cache=True)
    finally:
        hf_logger.removeHandler(handler)
    messages = [r.getMessage() for r in records] + [str(w.message) for w in caught]
    assert [m for m in messages if "deprecat" in m.lower()] == []


def _tokenizer_for(model, tmp_path):
    from transformers import AutoTokenizer

    from coglens.tiny import tiny_model_path

    return AutoTokenizer.from_pretrained(tiny_model_path(model.config.variant))
