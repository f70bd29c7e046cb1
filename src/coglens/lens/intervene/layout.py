"""Where the tokens of one forward call sit, and which of them a token selection picks, in padded columns.

A forward call feeds a window of ``L`` columns per row: the whole prompt at the prefill, the newest token at a
cached decode step (of the engine or of transformers' ``generate``). The attention mask covers the cached
columns and the window; left padding and columns a batch trimmed are mask zeros. A column's *position* is its
index in the row's sequence without padding, as the lens's token selections count them (see
:mod:`coglens.lens.capture.select`): ``last`` is the newest token of the call, ``[p]`` the p-th token of the
sequence (negative: from the end of the sequence so far), ``text`` every language token but bos, ``image`` every
vision-typed token. A decode step's token is a language token, so ``image`` selects nothing there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from coglens.lens.capture.select import TokenSpec
from coglens.modeling.routing import LANGUAGE_TOKEN_TYPE, VISION_TOKEN_TYPE


class InterventionError(ValueError):
    """An intervention that cannot apply: a malformed edit, a value of the wrong shape, a selection that does not
    fit the tensor. The message names the edit and what to change."""


@dataclass(frozen=True)
class CallLayout:
    """Positions and token types of every column of one forward call: the keys (cached + window) and the window
    (the queries, whose outputs the modules produce)."""

    step: int  # 0: the prefill (no cache), k: the k-th cached call after it
    positions: torch.Tensor  # [B, T] each key column's position in its row, -1 for padding
    types: torch.Tensor | None  # [B, T] token types of the key columns; None where earlier calls are unknown
    window: int  # L: the last L key columns are this call's tokens

    @classmethod
    def of_call(cls, kwargs: dict[str, Any], past_types: torch.Tensor | None) -> CallLayout:
        """From the model's forward arguments (``step`` 0: the caller, which sees the calls go by, counts them).
        ``past_types``: the key types of the previous call of the same batch (so that a decode step knows where
        the image tokens of the prompt were), if known."""
        ref = kwargs.get("input_ids")
        if ref is None:
            ref = kwargs.get("inputs_embeds")
        if ref is None:
            raise InterventionError("the model was called without input_ids or inputs_embeds")
        b, window = ref.shape[:2]
        device = ref.device
        mask = kwargs.get("attention_mask")
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        if mask is None or mask.dim() != 2:
            past = cache.get_seq_length() if cache is not None else 0
            mask = torch.ones(b, past + window, dtype=torch.long, device=device)
        mask = mask.bool()
        positions = (mask.long().cumsum(1) - 1).masked_fill(~mask, -1)
        given = kwargs.get("token_type_ids")
        if given is None:
            given = torch.full((b, window), LANGUAGE_TOKEN_TYPE, dtype=torch.long, device=device)
        total = mask.shape[1]
        types: torch.Tensor | None
        cached = getattr(cache, "token_types", None)  # the engine's: every column of its changing batch
        if given.shape[1] == total:  # the prefill, or transformers' generate (it extends the types every step)
            types = given.long()
        elif cached is not None and tuple(cached.shape) == (b, total):
            types = cached.long().to(device)
        elif past_types is not None and past_types.shape == (b, total - window):
            types = torch.cat((past_types.to(device), given[:, -window:].long()), dim=1)
        else:
            types = None
        return cls(0, positions, types, window)

    @property
    def prefill(self) -> bool:
        """No cached columns: the whole sequence is fed now."""
        return self.window == self.positions.shape[1]

    @property
    def batch_size(self) -> int:
        return self.positions.shape[0]

    def keys(self, spec: TokenSpec, what: str) -> torch.Tensor:
        """[B, T] bool: the key columns ``spec`` selects."""
        if spec.needs_token_types and self.types is None:
            raise InterventionError(
                f"{what}: the token selection {str(spec)!r} needs the token types of earlier calls, which this "
                "call does not give (a decode step without the prompt's token types: a cache other than the "
                "engine's, or rows that changed between calls); intervene at the prefill only (steps: prefill)")
        return _select(spec, self.positions, self.types)

    def queries(self, spec: TokenSpec, what: str) -> torch.Tensor:
        """[B, L] bool: the window columns ``spec`` selects."""
        window = self.positions[:, -self.window:]
        types = self.types[:, -self.window:] if self.types is not None else None
        if spec.needs_token_types and types is None:
            types = torch.full_like(window, LANGUAGE_TOKEN_TYPE)  # a decode window holds language tokens only
        lengths = self.positions.max(dim=1).values + 1
        return _select(spec, window, types, lengths=lengths)


def _select(spec: TokenSpec, positions: torch.Tensor, types: torch.Tensor | None,
            lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Columns of ``positions`` (-1: padding) that ``spec`` picks; ``lengths``: each row's sequence length so far
    (default: the columns' own)."""
    real = positions >= 0
    if lengths is None:
        lengths = positions.max(dim=1).values + 1
    n = lengths[:, None]
    kind = spec.kind
    if kind == "all":
        return real
    if kind == "last":
        return real & (positions == n - 1)
    if kind == "positions":
        wanted = torch.zeros_like(real)
        for p in spec.positions:
            wanted |= positions == (p if p >= 0 else n + p)
        return real & wanted
    if kind == "slice":
        picked = torch.zeros_like(real)
        for row in range(positions.shape[0]):
            chosen = range(int(lengths[row]))[spec.start:spec.stop]
            picked[row] = torch.isin(positions[row], torch.tensor(list(chosen), dtype=torch.long,
                                                                   device=positions.device))
        return real & picked
    assert types is not None
    vision = real & (types == VISION_TOKEN_TYPE)
    if kind == "image":
        return vision
    if kind == "text":
        return real & (types != VISION_TOKEN_TYPE) & (positions != 0)
    before = torch.zeros_like(vision)
    before[:, 1:] = vision[:, :-1]
    after = torch.zeros_like(vision)
    after[:, :-1] = vision[:, 1:]
    if kind == "boi":
        return vision & ~before
    if kind == "eoi":
        return vision & ~after
    run_index = (vision & ~before).long().cumsum(1) - 1  # frame:N = the N-th vision run
    runs = (vision & ~before).sum(1, keepdim=True)
    frame = torch.where(torch.tensor(spec.frame < 0, device=positions.device), runs + spec.frame,
                        torch.full_like(runs, spec.frame))
    return vision & (run_index == frame)
