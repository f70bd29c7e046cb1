"""The KV cache of one prefill forward pass, before its rows join the running batch (:mod:`.slots`)."""

from __future__ import annotations

import torch


class BatchKVCache:
    """Per layer (B, kv_heads, L, D) keys and values; duck-types the two methods the model calls.

    A prefill calls ``update`` once per layer; the engine then copies the rows into its decode slots.
    """

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        # (B, cached + fed columns) token types of the call being run, set by the engine: hooks that select tokens
        # by type (interventions) read where the prompt's image tokens are
        self.token_types: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx != len(self.keys):
            raise RuntimeError(f"the prefill cache was given layer {layer_idx} after {len(self.keys)} layers: it "
                               "holds one forward pass")
        self.keys.append(k)
        self.values.append(v)
        return k, v

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys[layer_idx].shape[2] if self.keys else 0
