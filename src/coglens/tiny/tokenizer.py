"""A small byte-level BPE tokenizer, trained locally on a bundled text, with the special tokens of the real ones.

Byte-level BPE never needs an unknown token and decodes back to the exact input text, spaces included. The
pre-tokenizer splits like Llama-3's (digits in runs of at most three), so grounding boxes such as
``[[086,540,400,760]]`` become brackets, commas and 3-digit pieces. Training is deterministic: merges are picked
by count, ties broken by the pair itself, so every build writes the same ``tokenizer.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer

TOKENIZER_VOCAB_SIZE = 1024  # regular + special tokens; the checkpoint's vocab_size

# Llama-3's split pattern: contractions, letter runs, digit runs of 1-3, punctuation runs, whitespace.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class TokenizerLayout:
    """Which special tokens a family has and where their ids sit."""

    special_tokens: tuple[str, ...]  # in id order
    specials_first: bool  # Vicuna: ids 0, 1, 2; Llama-3: right after the regular vocabulary
    bos: str
    eos: str
    pad: str  # also the image placeholder id written into image spans
    unk: str | None
    stop: tuple[str, ...]  # tokens that end a chat answer (generation_config ``eos_token_id``)


VICUNA_LAYOUT = TokenizerLayout(
    special_tokens=("<unk>", "<s>", "</s>"), specials_first=True,
    bos="<s>", eos="</s>", pad="<unk>", unk="<unk>", stop=("</s>",),
)

# Llama-3's first ten special tokens in their order, so bos/eos/pad/eot keep their offsets (+0, +1, +2, +9).
LLAMA3_LAYOUT = TokenizerLayout(
    special_tokens=(
        "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
        "<|reserved_special_token_2|>", "<|reserved_special_token_3|>", "<|start_header_id|>",
        "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>",
    ),
    specials_first=False,
    bos="<|begin_of_text|>", eos="<|end_of_text|>", pad="<|reserved_special_token_0|>", unk=None,
    stop=("<|end_of_text|>", "<|eot_id|>"),
)


def training_text() -> str:
    """The bundled English text (scenes, colours, objects, counting, grounding boxes) the BPE is trained on."""
    return files("coglens.tiny").joinpath("data/corpus.txt").read_text(encoding="utf-8")


def build_tokenizer(layout: TokenizerLayout) -> Tokenizer:
    """Train the BPE and attach the layout's special tokens and its bos-prepending post-processor."""
    # imported here: the layouts above are read by coglens.tiny.variants, which the `coglens` command imports
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    n_special = len(layout.special_tokens)
    trainer = trainers.BpeTrainer(
        # With specials_first the trainer places them at ids 0.. and counts them in vocab_size.
        vocab_size=TOKENIZER_VOCAB_SIZE if layout.specials_first else TOKENIZER_VOCAB_SIZE - n_special,
        special_tokens=list(layout.special_tokens) if layout.specials_first else [],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable, so no unknown tokens
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_text().splitlines(keepends=True), trainer=trainer)
    if not layout.specials_first:
        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in layout.special_tokens])
    bos_id = tokenizer.token_to_id(layout.bos)
    # Like the real tokenizers, encode() prepends bos unless add_special_tokens=False.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{layout.bos}:0 $A:0", pair=f"{layout.bos}:0 $A:0 {layout.bos}:1 $B:1",
        special_tokens=[(layout.bos, bos_id)],
    )
    return tokenizer


def special_tokens_map(layout: TokenizerLayout) -> dict[str, str]:
    """``special_tokens_map.json``: the role of each special token."""
    roles = {"bos_token": layout.bos, "eos_token": layout.eos, "pad_token": layout.pad}
    return roles if layout.unk is None else {**roles, "unk_token": layout.unk}


def tokenizer_config(layout: TokenizerLayout, model_max_length: int) -> dict[str, object]:
    """``tokenizer_config.json``: makes ``AutoTokenizer`` load ``tokenizer.json`` as a fast tokenizer."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_tokens_map(layout),
        # Cleanup would turn "a ." into "a." and break the exact decode round trip.
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "model_input_names": ["input_ids", "attention_mask"],
    }
