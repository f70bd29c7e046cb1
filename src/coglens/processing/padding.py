"""Left padding, the batch layout of CogVLM: shorter rows get pad ids, token type 0 and attention mask 0 on the
left, so every row ends in the last column and each decode step appends one column to all of them.

One function for the processor's batches, the engine's prefill and the engine's KV cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from coglens.modeling.routing import LANGUAGE_TOKEN_TYPE

Row = Sequence[int] | torch.Tensor


def pad_left(tensor: torch.Tensor, width: int, *, dim: int = -1, value: int | float = 0) -> torch.Tensor:
    """``tensor`` widened to ``width`` along ``dim`` by ``value`` entries on the left (itself if already that wide)."""
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat((tensor.new_full(shape, value), tensor), dim=dim)


def left_padded_batch(
    input_ids: Sequence[Row], token_type_ids: Sequence[Row], attention_masks: Sequence[Row] | None = None, *,
    pad_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of 1-D ids, token types and attention masks (all ones when None) -> ``[B, L]`` long tensors, each row
    left-padded to the longest."""
    width = max(len(ids) for ids in input_ids)

    def stack(rows: Sequence[Row], value: int) -> torch.Tensor:
        return torch.stack([pad_left(torch.as_tensor(row, dtype=torch.long), width, value=value) for row in rows])

    if attention_masks is None:
        attention_masks = [torch.ones(len(ids), dtype=torch.long) for ids in input_ids]
    return stack(input_ids, pad_token_id), stack(token_type_ids, LANGUAGE_TOKEN_TYPE), stack(attention_masks, 0)
