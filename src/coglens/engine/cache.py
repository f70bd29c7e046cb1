"""A KV cache whose rows can leave and join, so requests enter and finish between decode steps."""

from __future__ import annotations

import torch

from ..processing.padding import pad_left


class BatchKVCache:
    """Per layer (B, kv_heads, L, D) keys and values; duck-types the two methods the model calls.

    Storage grows by doubling, so a decode step writes one column in place instead of copying the whole
    history (which would make long prompts decode slower). Rows are left-aligned by padding: a row with a
    shorter history has masked columns on the left, and its position ids are carried explicitly, so padding
    never changes what a row computes.
    """

    def __init__(self) -> None:
        self._k: list[torch.Tensor] = []
        self._v: list[torch.Tensor] = []
        self._len: list[int] = []
        # (B, cached + fed columns) token types of the call being run, set by the engine: hooks that select tokens
        # by type during a decode step (interventions) read where the prompt's image tokens were
        self.token_types: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx == len(self._k):
            self._k.append(k)
            self._v.append(v)
            self._len.append(k.shape[2])
        else:
            n, new = self._len[layer_idx], k.shape[2]
            if n + new > self._k[layer_idx].shape[2]:
                self._k[layer_idx] = _grow(self._k[layer_idx], n, n + new)
                self._v[layer_idx] = _grow(self._v[layer_idx], n, n + new)
            self._k[layer_idx][:, :, n:n + new] = k
            self._v[layer_idx][:, :, n:n + new] = v
            self._len[layer_idx] = n + new
        n = self._len[layer_idx]
        return self._k[layer_idx][:, :, :n], self._v[layer_idx][:, :, :n]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._len[layer_idx] if self._len else 0

    @property
    def keys(self) -> list[torch.Tensor]:
        return [k[:, :, :n] for k, n in zip(self._k, self._len, strict=True)]

    @property
    def values(self) -> list[torch.Tensor]:
        return [v[:, :, :n] for v, n in zip(self._v, self._len, strict=True)]

    def _reset(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        self._k, self._v, self._len = keys, values, [k.shape[2] for k in keys]

    def select(self, rows: torch.Tensor) -> None:
        self._reset([k.index_select(0, rows) for k in self.keys], [v.index_select(0, rows) for v in self.values])

    def trim_left(self, n: int) -> None:
        if n:
            self._reset([k[:, :, n:] for k in self.keys], [v[:, :, n:] for v in self.values])

    def extend(self, other: BatchKVCache) -> None:
        """Append ``other``'s rows below ours, left-padding whichever history is shorter."""
        if not self._k:
            self._reset(other.keys, other.values)
            return
        width = max(self.get_seq_length(), other.get_seq_length())

        def stack(mine: list[torch.Tensor], theirs: list[torch.Tensor]) -> list[torch.Tensor]:
            return [torch.cat((pad_left(a, width, dim=2), pad_left(b, width, dim=2)))
                    for a, b in zip(mine, theirs, strict=True)]

        self._reset(stack(self.keys, other.keys), stack(self.values, other.values))


def _grow(x: torch.Tensor, used: int, needed: int) -> torch.Tensor:
    capacity = max(needed, 2 * x.shape[2], 16)
    out = x.new_empty(x.shape[0], x.shape[1], capacity, x.shape[3])
    out[:, :, :used] = x[:, :, :used]
    return out

