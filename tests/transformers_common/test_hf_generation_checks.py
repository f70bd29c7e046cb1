"""``generate()`` on tiny models of the three variants, with images: the ground that transformers'
``GenerationTesterMixin`` covers for its own models.

That mixin lives in ``tests/generation/test_utils.py`` of the transformers repository, which the release's sdist does
not ship (and CI cannot reach GitHub), so these checks are ours: greedy equals sampling with ``top_k=1``, beam
search and ``num_return_sequences`` (rows and their images repeated together), ``output_scores`` / ``output_logits``
/ ``return_dict_in_generate``, left-padding invariance, ``use_cache=True`` equals ``use_cache=False``,
``max_new_tokens``, generating from ``inputs_embeds``, continuing from a returned cache, and assisted decoding.
"""

from __future__ import annotations

import pytest
import torch
from cogvlm_tester import VARIANTS, CogvlmModelTester

from coglens.modeling.modeling_cogvlm import CACHE_FIELD

NEW = 4  # new tokens per generate call
ATOL = 1e-5


@pytest.fixture(scope="module", params=list(VARIANTS))
def setup(request):
    """A tiny model of one variant that never stops early (no eos), and a 2-row prompt with one image per row."""
    torch.manual_seed(0)
    tester = CogvlmModelTester(None, request.param)
    config, inputs = tester.prepare_config_and_inputs_for_common()
    model = VARIANTS[request.param][1](config).eval()
    model.generation_config.eos_token_id = None  # length checks need every row to run to max_new_tokens
    model.generation_config.pad_token_id = config.pad_token_id
    pixels = inputs.pop("pixel_values")
    inputs["images"] = [[image] for image in pixels]  # coglens' per-row image lists
    return model, inputs, pixels, tester


def _generate(model, inputs, **kwargs):
    with torch.no_grad():
        return model.generate(**inputs, **{"max_new_tokens": NEW, "do_sample": False, **kwargs})


def _prompt_len(inputs) -> int:
    return inputs["input_ids"].shape[1]


def test_max_new_tokens_and_plain_output(setup):
    model, inputs, _, _ = setup
    out = _generate(model, inputs)
    assert isinstance(out, torch.Tensor) and out.shape == (2, _prompt_len(inputs) + NEW)
    assert torch.equal(out[:, : _prompt_len(inputs)], inputs["input_ids"])
    assert _generate(model, inputs, max_new_tokens=1).shape[1] == _prompt_len(inputs) + 1


def test_images_lists_and_pixel_values_generate_the_same(setup):
    model, inputs, pixels, _ = setup
    batched = {k: v for k, v in inputs.items() if k != "images"}
    assert torch.equal(_generate(model, inputs), _generate(model, batched, pixel_values=pixels))


def test_scores_logits_and_dict_output(setup):
    model, inputs, _, _ = setup
    out = _generate(model, inputs, output_scores=True, output_logits=True, return_dict_in_generate=True)
    assert out.sequences.shape == (2, _prompt_len(inputs) + NEW)
    assert len(out.scores) == len(out.logits) == NEW
    assert all(s.shape == (2, model.config.vocab_size) for s in (*out.scores, *out.logits))
    # greedy: each new token is the argmax of its step's scores
    assert torch.equal(torch.stack(out.scores, 1).argmax(-1), out.sequences[:, _prompt_len(inputs):])
    # the first step's logits are the forward pass's logits at the last prompt position
    with torch.no_grad():
        forward = model(**inputs).logits[:, -1]
    torch.testing.assert_close(out.logits[0], forward, atol=ATOL, rtol=ATOL)
    assert getattr(out, CACHE_FIELD) is not None


def test_greedy_equals_sampling_with_top_k_1(setup):
    model, inputs, _, _ = setup
    torch.manual_seed(0)
    sampled = _generate(model, inputs, do_sample=True, top_k=1)
    assert torch.equal(sampled, _generate(model, inputs))


def test_use_cache_true_equals_use_cache_false(setup):
    model, inputs, _, _ = setup
    kwargs = {"output_scores": True, "return_dict_in_generate": True}
    cached = _generate(model, inputs, use_cache=True, **kwargs)
    uncached = _generate(model, inputs, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.scores, uncached.scores, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("num_beams", [1, 2])
def test_beam_search_and_num_return_sequences(setup, num_beams):
    """Every row (and its images) is repeated for each beam / returned sequence."""
    model, inputs, _, _ = setup
    if num_beams == 1:
        torch.manual_seed(0)
        out = _generate(model, inputs, do_sample=True, num_return_sequences=3, return_dict_in_generate=True)
        expected_rows = 6
    else:
        out = _generate(model, inputs, num_beams=2, num_return_sequences=2, output_scores=True,
                        return_dict_in_generate=True)
        expected_rows = 4
        assert out.sequences_scores.shape == (expected_rows,)
        assert torch.equal(_generate(model, inputs, num_beams=2), out.sequences[::2])  # the best beam of each row
    assert out.sequences.shape == (expected_rows, _prompt_len(inputs) + NEW)
    prompts = inputs["input_ids"].repeat_interleave(expected_rows // 2, dim=0)
    assert torch.equal(out.sequences[:, : _prompt_len(inputs)], prompts)


def test_left_padding_does_not_change_a_row(setup):
    """A short row generates the same alone and left-padded next to a longer one."""
    model, inputs, _, tester = setup
    short = {k: v[:1, :-3] if torch.is_tensor(v) else v[:1] for k, v in inputs.items()}
    long = {k: v[1:] if torch.is_tensor(v) else v[1:] for k, v in inputs.items()}
    pad = torch.full((1, 3), tester.pad_token_id)
    batch = {
        "input_ids": torch.cat([torch.cat([pad, short["input_ids"]], 1), long["input_ids"]]),
        "token_type_ids": torch.cat([torch.cat([torch.zeros_like(pad), short["token_type_ids"]], 1),
                                     long["token_type_ids"]]),
        "attention_mask": torch.cat([torch.cat([torch.zeros_like(pad), short["attention_mask"]], 1),
                                     long["attention_mask"]]),
        "images": short["images"] + long["images"],
    }
    kwargs = {"output_scores": True, "return_dict_in_generate": True}
    alone, padded = _generate(model, short, **kwargs), _generate(model, batch, **kwargs)
    assert torch.equal(alone.sequences[0, -NEW:], padded.sequences[0, -NEW:])
    for a, b in zip(alone.scores, padded.scores, strict=True):
        torch.testing.assert_close(a[0], b[0], atol=ATOL, rtol=ATOL)


def test_generate_from_inputs_embeds(setup):
    """Given embeddings, the images still fill the image span; generate returns only the new tokens."""
    model, inputs, _, tester = setup
    with torch.no_grad():
        embeds = model.get_input_embeddings()(inputs["input_ids"])
    from_embeds = _generate(model, {k: v for k, v in inputs.items() if k != "input_ids"}, inputs_embeds=embeds)
    assert torch.equal(from_embeds, _generate(model, inputs)[:, _prompt_len(inputs):])
    # a text-only prompt needs no token_type_ids and no attention_mask, as with any transformers model
    text = inputs["input_ids"][:, tester.image_start + tester.num_image_tokens:]
    with torch.no_grad():
        from_text_embeds = _generate(model, {}, inputs_embeds=model.get_input_embeddings()(text))
    assert torch.equal(from_text_embeds, _generate(model, {"input_ids": text})[:, text.shape[1]:])


def test_continue_from_the_returned_cache(setup):
    """Generating 2 + 2 tokens through the returned cache equals generating 4 at once."""
    model, inputs, _, _ = setup
    first = _generate(model, inputs, max_new_tokens=NEW // 2, return_dict_in_generate=True)
    cache = getattr(first, CACHE_FIELD)
    assert cache.get_seq_length() == _prompt_len(inputs) + NEW // 2 - 1  # the last new token is not fed yet
    grown = first.sequences.shape[1] - _prompt_len(inputs)
    follow_up = {
        "input_ids": first.sequences,
        "token_type_ids": torch.cat([inputs["token_type_ids"], torch.zeros(2, grown, dtype=torch.long)], 1),
        "attention_mask": torch.cat([inputs["attention_mask"], torch.ones(2, grown, dtype=torch.long)], 1),
        "images": inputs["images"],  # not run again: the cache already holds the image
        CACHE_FIELD: cache,
    }
    continued = _generate(model, follow_up, max_new_tokens=NEW - NEW // 2)
    assert torch.equal(continued, _generate(model, inputs))


@pytest.mark.parametrize("mode", ["assistant_model", "prompt_lookup"])
def test_assisted_decoding_matches_greedy(setup, mode):
    """Speculative decoding (the model as its own assistant, or prompt lookup) verifies to the greedy tokens."""
    model, inputs, _, _ = setup
    row = {k: v[:1] if torch.is_tensor(v) else v[:1] for k, v in inputs.items()}  # assisted decoding takes 1 row
    extra = {"assistant_model": model} if mode == "assistant_model" else {"prompt_lookup_num_tokens": 2}
    assert torch.equal(_generate(model, row, **extra), _generate(model, row))
