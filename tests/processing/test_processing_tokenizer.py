"""load_tokenizer: where it looks, what it refuses, and the CogVLM-1 SentencePiece path."""

from __future__ import annotations

import json

import pytest
from processing_stubs import write_word_tokenizer
from testkit import copy_checkpoint, parity_folder

from coglens.processing.errors import TokenizerNotFoundError, VocabularyMismatchError
from coglens.processing.tokenizer import load_tokenizer

WORDS = ["Question:", "Answer:", "what", "is", "this"]


@pytest.fixture
def cogvlm2_folder(tmp_path):
    folder = tmp_path / "cogvlm2"
    copy_checkpoint(parity_folder("cogvlm2"), folder)
    return write_word_tokenizer(folder, WORDS)


def test_loads_the_checkpoints_own_tokenizer(cogvlm2_folder, tiny_config):
    tokenizer = load_tokenizer(cogvlm2_folder, config=tiny_config("cogvlm2"))
    assert tokenizer.bos_token_id == 1
    assert tokenizer.encode("Question: what is this Answer:", add_special_tokens=False) == [3, 5, 6, 7, 4]


def test_tokenizer_path_wins_over_the_checkpoint(cogvlm2_folder, tmp_path, tiny_config):
    other = write_word_tokenizer(tmp_path / "other", ["this", "is", "what"])
    tokenizer = load_tokenizer(cogvlm2_folder, other, config=tiny_config("cogvlm2"))
    assert tokenizer.encode("what", add_special_tokens=False) == [5]


def test_cogvlm1_without_tokenizer_path_names_vicuna(tiny_config):
    with pytest.raises(TokenizerNotFoundError, match="pass tokenizer_path=.*lmsys/vicuna-7b-v1.5"):
        load_tokenizer(parity_folder("cogvlm"), config=tiny_config("cogvlm"))


def test_cogvlm2_folder_without_tokenizer(tiny_config):
    with pytest.raises(TokenizerNotFoundError, match="no tokenizer files"):
        load_tokenizer(parity_folder("cogvlm2"), config=tiny_config("cogvlm2"))


def test_tokenizer_path_without_tokenizer_files(tmp_path, tiny_config):
    with pytest.raises(TokenizerNotFoundError, match="holds no tokenizer files"):
        load_tokenizer(parity_folder("cogvlm"), tmp_path, config=tiny_config("cogvlm"))


def test_uncached_hub_id_with_downloads_off_names_the_repo(tiny_config, tmp_path, monkeypatch):
    message = "cannot load a tokenizer from 'coglens-tests/no-such-tokenizer': .*hf download"
    with pytest.raises(TokenizerNotFoundError, match=message):
        load_tokenizer(parity_folder("cogvlm"), "coglens-tests/no-such-tokenizer", config=tiny_config("cogvlm"),
                       cache_dir=tmp_path, local_files_only=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TokenizerNotFoundError, match=message):
        load_tokenizer(parity_folder("cogvlm"), "coglens-tests/no-such-tokenizer", config=tiny_config("cogvlm"),
                       cache_dir=tmp_path)


def test_more_tokens_than_embeddings_is_refused(cogvlm2_folder, tiny_config):
    with pytest.raises(VocabularyMismatchError, match="tokenizer has 8 tokens but the model's vocab_size is 6"):
        load_tokenizer(cogvlm2_folder, config=tiny_config("cogvlm2", vocab_size=6))
    assert len(load_tokenizer(cogvlm2_folder, config=tiny_config("cogvlm2", vocab_size=8))) == 8


def _vicuna_like_folder(tmp_path, text: str):
    """A SentencePiece BPE model with Llama's settings, saved the way lmsys/vicuna-7b-v1.5 ships its tokenizer."""
    spm = pytest.importorskip("sentencepiece")
    folder = tmp_path / "vicuna"
    folder.mkdir()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=300, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", split_digits=True, minloglevel=2,
    )
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False,
    }))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
    }))
    return folder, spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))


def test_cogvlm1_sentencepiece_tokenizer_matches_sentencepiece(tmp_path, tiny_config):
    pytest.importorskip("google.protobuf", reason="transformers needs protobuf to read tokenizer.model")
    words = ["question", "answer", "short", "describe", "image", "vision", "expert", "token", "what", "how", "many",
             "boxes", "point", "the", "a", "in", "is", "it"]
    text = "\n".join(f"Question: {a} {b} {c}? Answer: {c} {a}." for a in words for b in words for c in words[:5])
    folder, reference = _vicuna_like_folder(tmp_path, text)

    tokenizer = load_tokenizer(parity_folder("cogvlm"), folder, config=tiny_config("cogvlm"))

    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 0)
    for prompt in (
        "Question: Describe this image Answer:",
        "Question: What is it? Answer: A vision expert.\nQuestion: How many 1227 tokens? Short answer:",
        "Can you point out the boxes [[086,540,400,760]] in the image?",
    ):
        assert tokenizer.encode(prompt, add_special_tokens=False) == reference.encode(prompt), prompt
        assert tokenizer.decode(reference.encode(prompt)) == prompt
