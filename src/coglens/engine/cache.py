"""A KV cache whose rows can leave and join, so requests enter and finish between decode steps."""

from __future__ import annotations

import torch


class BatchKVCache:
    """Per layer (B, kv_heads, L, D) keys and values; duck-types the two methods the model calls.

    Rows are left-aligned by padding: a row with a shorter history has masked columns on the left, and its
    position ids are carried explicitly, so padding never changes what a row computes.
    """

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer_idx] = torch.cat((self.keys[layer_idx], k), dim=2)
            self.values[layer_idx] = torch.cat((self.values[layer_idx], v), dim=2)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys[layer_idx].shape[2] if self.keys else 0

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0] if self.keys else 0

    def select(self, rows: torch.Tensor) -> None:
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]

    def trim_left(self, n: int) -> None:
        if n:
            self.keys = [k[:, :, n:] for k in self.keys]
            self.values = [v[:, :, n:] for v in self.values]

    def extend(self, other: BatchKVCache) -> None:
        """Append ``other``'s rows below ours, left-padding whichever history is shorter."""
        if not self.keys:
            self.keys, self.values = other.keys, other.values
            return
        width = max(self.get_seq_length(), other.get_seq_length())

        def stack(mine: list[torch.Tensor], theirs: list[torch.Tensor]) -> list[torch.Tensor]:
            return [torch.cat((_pad_left(a, width), _pad_left(b, width))) for a, b in zip(mine, theirs, strict=True)]

        self.keys, self.values = stack(self.keys, other.keys), stack(self.values, other.values)


def _pad_left(x: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - x.shape[2]
    if missing == 0:
        return x
    return torch.cat((x.new_zeros(x.shape[0], x.shape[1], missing, x.shape[3]), x), dim=2)


def pad_mask_left(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    return mask if missing == 0 else torch.cat((mask.new_zeros(mask.shape[0], missing), mask), dim=1)
