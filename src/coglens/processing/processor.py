"""``CogvlmProcessor``: queries, images and history -> one left-padded batch for ``CogvlmForCausalLM``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import BatchFeature

from coglens.modeling.configuration_cogvlm import CogvlmConfig, load_config
from coglens.processing.conversation import LANGUAGE_TOKEN_TYPE, build_conversation_input_ids
from coglens.processing.errors import ConversationError, ProcessingError
from coglens.processing.tokenizer import load_tokenizer


class CogvlmProcessor:
    """Builds each row with :func:`build_conversation_input_ids` and left-pads them into one batch.

    Padding uses the tokenizer's pad id (0 if it has none), token type 0 and attention mask 0, the convention
    the model's position ids and the original batched generation expect.
    """

    def __init__(self, tokenizer: Any, config: CogvlmConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config

    @classmethod
    def from_pretrained(cls, path: str | Path, tokenizer_path: str | Path | None = None) -> CogvlmProcessor:
        """Config from ``path/config.json``, tokenizer from ``tokenizer_path`` or else ``path``."""
        config = load_config(path)
        return cls(load_tokenizer(path, tokenizer_path, config=config), config)

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return 0 if pad is None else pad

    def __call__(
        self,
        queries: str | Sequence[str],
        images: Any = None,
        *,
        history: Any = None,
        template_version: str | None = None,
        allow_multiple_images: bool = False,
        return_tensors: str = "pt",
    ) -> BatchFeature:
        """Encode one query (``str``) or a batch (list of ``str``).

        For one query, ``images`` is its image (or list of images, or a CogVLM2-Video clip) and ``history``
        its list of turns. For a batch, both are lists with one entry per query (``None`` for none), or
        ``None``. Returns ``input_ids``, ``token_type_ids``, ``attention_mask`` ([B, L], left-padded) and
        ``images``: one list of tensors per row (``[]`` for a text-only row), ready for ``model(**batch)``.
        """
        if return_tensors != "pt":
            raise ProcessingError(f"return_tensors={return_tensors!r} is not supported; use 'pt' (PyTorch)")
        if isinstance(queries, str):
            batch_queries, batch_images, batch_history = [queries], [images], [history]
        else:
            batch_queries = list(queries)
            if not batch_queries:
                raise ConversationError("queries is empty; pass a string or a non-empty list of strings")
            batch_images = _per_row(images, len(batch_queries), "images")
            batch_history = _per_row(history, len(batch_queries), "history")
        rows = [
            build_conversation_input_ids(
                self.tokenizer, config=self.config, query=query, history=row_history, images=row_images,
                template_version=template_version, allow_multiple_images=allow_multiple_images,
            )
            for query, row_images, row_history in zip(batch_queries, batch_images, batch_history, strict=True)
        ]
        return self.collate(rows)

    def collate(self, rows: Sequence[dict[str, Any]]) -> BatchFeature:
        """Left-pad rows from ``build_conversation_input_ids`` into one batch."""
        length = max(len(row["input_ids"]) for row in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        token_type_ids = torch.full((len(rows), length), LANGUAGE_TOKEN_TYPE, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for index, row in enumerate(rows):
            start = length - len(row["input_ids"])
            input_ids[index, start:] = row["input_ids"]
            token_type_ids[index, start:] = row["token_type_ids"]
            attention_mask[index, start:] = row["attention_mask"]
        return BatchFeature({
            "input_ids": input_ids,
            "token_type_ids": token_type_ids,
            "attention_mask": attention_mask,
            "images": [list(row["images"] or []) for row in rows],
        })

    def decode(self, token_ids: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(token_ids, **kwargs)

    def batch_decode(self, sequences: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(sequences, **kwargs)


def _per_row(values: Any, batch_size: int, name: str) -> list[Any]:
    if values is None:
        return [None] * batch_size
    if not isinstance(values, (list, tuple)) or len(values) != batch_size:
        got = f"{len(values)} entries" if isinstance(values, (list, tuple)) else type(values).__name__
        raise ConversationError(
            f"for a batch of {batch_size} queries, {name} must be a list with one entry per query (None for "
            f"none), got {got}"
        )
    return list(values)
