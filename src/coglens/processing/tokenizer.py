"""Load the tokenizer that goes with a CogVLM checkpoint, from a local folder or a hub id.

CogVLM2 and CogVLM2-Video ship Llama-3's tokenizer in the checkpoint folder. CogVLM-1 ships none: it uses
Vicuna-7B-v1.5's SentencePiece tokenizer (the model card loads ``lmsys/vicuna-7b-v1.5``), loaded here with
``legacy=True`` as VLM-Lens and the original setup do, from a folder or hub id the user points at.

Hub ids (``THUDM/cogvlm2-llama3-chat-19B``, ``lmsys/vicuna-7b-v1.5``) go through
:func:`coglens.hub.resolve_checkpoint`: taken from the Hugging Face cache, downloaded only when downloads are on
(not with ``local_files_only=True`` or ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from coglens.hub import HubError, resolve_checkpoint
from coglens.modeling.configuration_cogvlm import COGVLM
from coglens.processing.errors import TokenizerNotFoundError, VocabularyMismatchError

if TYPE_CHECKING:
    from coglens.modeling.configuration_cogvlm import CogvlmConfig

# Any one of these marks a folder that AutoTokenizer can load.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
_VICUNA_HINT = "a local copy of lmsys/vicuna-7b-v1.5 (CogVLM-1 uses its tokenizer and ships none)"


def load_tokenizer(
    model_path: str | os.PathLike,
    tokenizer_path: str | os.PathLike | None = None,
    *,
    config: CogvlmConfig | None = None,
    variant: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> PreTrainedTokenizerBase:
    """The tokenizer from ``tokenizer_path`` if given, else from the checkpoint ``model_path``.

    Both may be local folders or hub ids (``revision`` applies to ``model_path`` only; ``cache_dir``,
    ``local_files_only`` and ``token`` to both). ``config`` (the checkpoint's) gives the variant and the
    vocabulary check; without it pass ``variant=`` and nothing is checked. Raises
    :class:`TokenizerNotFoundError` when there is no tokenizer where we look (the message names the folder or
    repo), and :class:`VocabularyMismatchError` when the tokenizer has more ids than the model's embedding table.
    """
    if config is None and variant is None:
        raise TypeError("load_tokenizer needs config= (the checkpoint's CogvlmConfig) or variant=")
    variant = config.variant if config is not None else variant
    hint = _VICUNA_HINT if variant == COGVLM else "the checkpoint's tokenizer files"
    hub = {"cache_dir": cache_dir, "local_files_only": local_files_only, "token": token}
    if tokenizer_path is None:
        source = _resolve(model_path, {**hub, "revision": revision})
        if not _has_tokenizer_files(source):
            raise TokenizerNotFoundError(
                f"no tokenizer files ({', '.join(_TOKENIZER_FILES)}) in {str(model_path)!r}; pass "
                f"tokenizer_path= pointing at {hint}"
            )
    else:
        source = _resolve(tokenizer_path, hub)
        if not _has_tokenizer_files(source):
            raise TokenizerNotFoundError(
                f"tokenizer_path {str(tokenizer_path)!r} holds no tokenizer files "
                f"({', '.join(_TOKENIZER_FILES)}); point it at {hint}"
            )
    # Passing our config keeps AutoTokenizer from reading THUDM's config.json, whose auto_map would make
    # transformers ask about trust_remote_code.
    extra = {"legacy": True} if variant == COGVLM else {}
    if config is not None:
        extra["config"] = config
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True, **extra)
    except (OSError, ValueError) as exc:
        raise TokenizerNotFoundError(
            f"cannot load a tokenizer from {str(source)!r}; pass tokenizer_path= {hint}. transformers said: {exc}"
        ) from exc
    if config is not None:
        check_vocabulary(tokenizer, config)
    return tokenizer


def _resolve(name_or_path: str | os.PathLike, hub: dict) -> Path:
    """A local folder for a folder or hub id; a hub id not in the cache (with downloads off) names the repo."""
    try:
        return resolve_checkpoint(name_or_path, weights=False, **hub)
    except HubError as exc:
        raise TokenizerNotFoundError(f"cannot load a tokenizer from {str(name_or_path)!r}: {exc}") from exc


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
