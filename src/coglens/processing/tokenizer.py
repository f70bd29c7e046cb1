"""Load the tokenizer that goes with a CogVLM checkpoint, from local files only.

CogVLM2 and CogVLM2-Video ship Llama-3's tokenizer in the checkpoint folder. CogVLM-1 ships none: it uses
Vicuna-7B-v1.5's SentencePiece tokenizer (the model card loads ``lmsys/vicuna-7b-v1.5``), loaded here with
``legacy=True`` as VLM-Lens and the original setup do, from a folder the user points at.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from coglens.processing.errors import TokenizerNotFoundError, VocabularyMismatchError

if TYPE_CHECKING:
    from coglens.modeling.configuration_cogvlm import CogvlmConfig

# Any one of these marks a folder that AutoTokenizer can load.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
_VICUNA_HINT = "a local copy of lmsys/vicuna-7b-v1.5 (CogVLM-1 uses its tokenizer and ships none)"


def load_tokenizer(
    model_path: str | Path, tokenizer_path: str | Path | None = None, *, config: CogvlmConfig
) -> PreTrainedTokenizerBase:
    """The tokenizer from ``tokenizer_path`` if given, else from the checkpoint folder ``model_path``.

    Never downloads (``local_files_only=True``): a hub id works only if it is already in the local cache.
    Raises :class:`TokenizerNotFoundError` when there is no tokenizer where we look, and
    :class:`VocabularyMismatchError` when the tokenizer has more ids than the model's embedding table.
    """
    hint = _VICUNA_HINT if config.variant == "cogvlm" else "the checkpoint's tokenizer files"
    if tokenizer_path is None:
        source = Path(model_path)
        if not _has_tokenizer_files(source):
            raise TokenizerNotFoundError(
                f"no tokenizer files ({', '.join(_TOKENIZER_FILES)}) in {str(model_path)!r}; pass "
                f"tokenizer_path= pointing at {hint}"
            )
    else:
        source = Path(tokenizer_path)
        if source.exists() and not _has_tokenizer_files(source):
            raise TokenizerNotFoundError(
                f"tokenizer_path {str(tokenizer_path)!r} holds no tokenizer files "
                f"({', '.join(_TOKENIZER_FILES)}); point it at {hint}"
            )
    # Passing our config keeps AutoTokenizer from reading THUDM's config.json, whose auto_map would make
    # transformers ask about trust_remote_code.
    extra = {"legacy": True} if config.variant == "cogvlm" else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), config=config, local_files_only=True, **extra)
    except (OSError, ValueError) as exc:  # transformers reports a missing folder / uncached hub id as either
        raise TokenizerNotFoundError(
            f"cannot load a tokenizer from {str(source)!r}: it is neither a local folder with tokenizer "
            f"files nor a hub id in the local cache (coglens never downloads); pass tokenizer_path= {hint}. "
            f"transformers said: {exc}"
        ) from exc
    check_vocabulary(tokenizer, config)
    return tokenizer


def check_vocabulary(tokenizer: PreTrainedTokenizerBase, config: CogvlmConfig) -> None:
    """Refuse a tokenizer whose ids would index past the model's ``vocab_size`` embedding rows."""
    if len(tokenizer) > config.vocab_size:
        raise VocabularyMismatchError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {config.vocab_size}: "
            f"ids {config.vocab_size}..{len(tokenizer) - 1} have no embedding. This is the wrong tokenizer "
            "for this checkpoint; pass the one it was trained with"
        )


def _has_tokenizer_files(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).is_file() for name in _TOKENIZER_FILES)
