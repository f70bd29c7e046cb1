"""Stand-in tokenizers for the processing tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


class StubTokenizer:
    """The two members ``build_conversation_input_ids`` uses, plus a record of every text it encoded."""

    bos_token_id = 1
    pad_token_id = None

    def __init__(self, rule: Callable[[str], list[int]]) -> None:
        self.rule = rule
        self.calls: list[str] = []

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        assert add_special_tokens is False  # the original never lets the tokenizer add bos itself
        self.calls.append(text)
        return list(self.rule(text))


def video_stub_rule(seed: int = 0) -> Callable[[str], list[int]]:
    """cases.json -> conventions.stub_tokenizer.rule of the CogVLM2-Video goldens."""

    def rule(text: str) -> list[int]:
        return [
            3 + int.from_bytes(hashlib.sha256(f"cogvlm2-video-stub/{seed}/{piece}".encode()).digest()[:8], "big") % 997
            for piece in text.split()
        ]

    return rule


def fixed_rule(table: dict[str, list[int]]) -> Callable[[str], list[int]]:
    """Answers only the texts it was given: any other text fails the test loudly."""
    return lambda text: table[text]


def write_word_tokenizer(folder: Path, words: list[str], *, pad: str | None = None) -> Path:
    """A whitespace word-level tokenizer saved as a transformers folder: ids 0-2 are <unk>, <s>, </s>."""
    vocab = {word: index for index, word in enumerate(["<unk>", "<s>", "</s>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token=pad
    )
    tokenizer.save_pretrained(folder)
    return folder
