"""Toy models shaped like a decoder LM: layers that return tuples, an output dataclass, a shared module."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

HIDDEN = 4
VOCAB = 10


@dataclass
class ToyOutput:
    logits: torch.Tensor
    hidden: torch.Tensor
    cache: torch.Tensor | None = None


class Block(nn.Module):
    """Returns (hidden, None) like a decoder layer without attention weights."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, hidden: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, None]:
        return self.lin(hidden) * scale, None


class ToyLM(nn.Module):
    """embed -> 2 blocks (the second adds in place onto the first's output) -> norm applied twice -> head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.layers = nn.ModuleList([Block(), Block()])
        self.norm = nn.LayerNorm(HIDDEN)  # called twice per forward
        self.head = nn.Linear(HIDDEN, VOCAB, bias=False)
        self.unused = nn.Linear(HIDDEN, 1)

    def forward(self, input_ids: torch.Tensor, scale: float = 1.0) -> ToyOutput:
        hidden = self.embed(input_ids)
        hidden = self.layers[0](hidden)[0]
        update = self.layers[1](hidden, scale=scale)[0]
        hidden += update  # in place on layers.0's output: a capture must have copied it
        hidden = self.norm(self.norm(hidden))
        return ToyOutput(logits=self.head(hidden), hidden=hidden)
