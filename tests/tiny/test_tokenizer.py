"""The bundled tokenizer loads with AutoTokenizer, has the families' special ids and round-trips text."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from coglens.tiny import TINY_VARIANTS
from coglens.tiny.tokenizer import LLAMA3_LAYOUT, VICUNA_LAYOUT, build_tokenizer

TEXT = "Question: How many dogs are there?  Answer: two dogs [[086,540,400,760]] .\nThe end"


@pytest.fixture(scope="module")
def tokenizers(tiny_dirs):
    return {v: AutoTokenizer.from_pretrained(tiny_dirs[v]) for v in TINY_VARIANTS}


@pytest.mark.parametrize("variant", TINY_VARIANTS)
def test_vocab_size_and_special_ids_match_config(variant, tiny_dirs, tokenizers):
    tok = tokenizers[variant]
    config = json.loads((tiny_dirs[variant] / "config.json").read_text())
    assert tok.is_fast
    assert len(tok) == config["vocab_size"] == 1024
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (
        config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]
    )


def test_vicuna_special_ids(tokenizers):
    tok = tokenizers["cogvlm"]
    assert tok.convert_tokens_to_ids(["<unk>", "<s>", "</s>"]) == [0, 1, 2]
    assert (tok.unk_token, tok.pad_token) == ("<unk>", "<unk>")


@pytest.mark.parametrize("variant", ["cogvlm2", "cogvlm2-video"])
def test_llama3_special_ids(variant, tokenizers):
    tok = tokenizers[variant]
    names = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|eot_id|>"]
    assert tok.convert_tokens_to_ids(names) == [1014, 1015, 1016, 1023]  # Llama-3's offsets +0, +1, +2, +9
    assert tok.pad_token == "<|reserved_special_token_0|>"
    assert tok.unk_token is None


@pytest.mark.parametrize("variant", TINY_VARIANTS)
def test_bos_only_with_special_tokens_and_exact_round_trip(variant, tokenizers):
    tok = tokenizers[variant]
    plain = tok(TEXT, add_special_tokens=False).input_ids
    with_bos = tok(TEXT).input_ids
    assert with_bos == [tok.bos_token_id, *plain]
    assert tok.bos_token_id not in plain
    assert tok.decode(plain) == TEXT
    assert tok.decode(with_bos, skip_special_tokens=True) == TEXT
    assert tok.decode([tok.convert_tokens_to_ids("Ġdogs")]) == " dogs"


def test_grounding_boxes_split_into_digit_groups(tokenizers):
    tok = tokenizers["cogvlm2"]
    pieces = tok.convert_ids_to_tokens(tok("[[086,540,400,760]]", add_special_tokens=False).input_ids)
    assert "".join(pieces) == "[[086,540,400,760]]"  # no spaces inside, so byte-level symbols are the text
    assert pieces.count(",") == 3
    digits = [p for p in pieces if p.isdigit()]
    assert "".join(digits) == "086540400760" and all(len(p) <= 3 for p in digits)


def test_common_words_are_single_tokens(tokenizers):
    tok = tokenizers["cogvlm"]
    for word in (" image", " red", " three", " Answer"):
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word


def test_any_text_encodes_without_unknown_tokens(tokenizers):
    tok = tokenizers["cogvlm"]
    text = "Zürich ☃ 東京 — émoji 🙂"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text


def test_training_is_deterministic():
    """In-process; test_cache's race test compares whole folders built by fresh interpreters too."""
    for layout in (VICUNA_LAYOUT, LLAMA3_LAYOUT):
        assert build_tokenizer(layout).to_str() == build_tokenizer(layout).to_str()
