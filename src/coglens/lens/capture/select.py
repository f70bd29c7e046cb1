"""Which token positions of a captured tensor to keep, and how to pool them.

Positions always refer to a row's sequence WITHOUT padding: the attention mask's zeros are dropped per row
before indexing, so ``last`` or ``[0, 5]`` pick the same tokens whether a row was left-padded in a batch or
run alone. Token types come from the processor: 1 = vision (boi, patches, eoi of every image or video frame),
0 = language.

- ``all``: every real position. ``last``: the last one. ``[p, ...]``: these positions (negative from the end).
- ``slice:START:STOP``: Python slice semantics, either bound may be empty (``slice:-4:`` = the last four).
- ``image``: vision-typed positions. ``boi`` / ``eoi``: first / last position of each vision run.
- ``frame:N``: the N-th vision run (0-based, negative from the end): one video frame in the ``chat`` layout,
  the whole video in the ``base`` layout (one contiguous run). Rows with fewer runs select nothing.
- ``text``: language-typed positions EXCEPT the first real position (the bos every CogVLM prompt starts
  with): bos is an attention sink whose activations are orders of magnitude larger than the others' and would
  dominate a mean. Select it explicitly with ``[0]``.

Which axis holds positions: a 3-D ``[B, L, D]`` output (hidden states, logits) has one per token; a 2-D
``[B, L]`` output matching the token layout holds one scalar per token; any other 2-D ``[B, D]`` output, a
1-D ``[B]`` one or a 4-D+ one (conv maps, attention weights) is ONE position per row, so pooling never
averages features. Selections that need token types only apply when a row's position count equals the
prompt's length (LM-sequence outputs); on other outputs (a vision tower's ``[B, n_patches, D]``) positional
selections index the axis as it is and type-based ones raise :class:`SelectionError`.

During generation, forward call ``step`` > 0 appends ``step`` language tokens to the prompt's layout; a cached
decode step's output covers only the newest position(s), so the layout is cut to its last positions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from coglens.lens.capture.choices import POOLING_CHOICES, TOKEN_CHOICES, TOKEN_KEYWORDS, Pooling, TokenKeyword
from coglens.modeling.routing import VISION_TOKEN_TYPE

_TYPE_BASED = frozenset({"image", "text", "boi", "eoi", "frame"})


class SelectionError(ValueError):
    """A token selection or pooling that is malformed or cannot apply to the captured tensor."""


@dataclass(frozen=True)
class TokenSpec:
    """A parsed token selection; ``str(spec)`` is its canonical text and parses back to the same spec."""

    kind: TokenKeyword | Literal["positions", "slice", "frame"]
    positions: tuple[int, ...] = ()
    start: int | None = None
    stop: int | None = None
    frame: int = 0

    @classmethod
    def parse(cls, value: TokenSpec | str | int | Sequence[int]) -> TokenSpec:
        """Read a selection as written in a config or on the command line (see the module docstring)."""
        if isinstance(value, TokenSpec):
            return value
        if isinstance(value, str):
            return cls._parse_text(value.strip())
        if isinstance(value, int) and not isinstance(value, bool):
            return cls("positions", positions=(value,))
        if isinstance(value, Sequence) and value and all(_is_int(v) for v in value):
            return cls("positions", positions=tuple(int(v) for v in value))
        raise SelectionError(f"token selection {value!r} is not one of: {TOKEN_CHOICES}")

    @classmethod
    def _parse_text(cls, text: str) -> TokenSpec:
        if text in TOKEN_KEYWORDS:
            return cls(text)  # type: ignore[arg-type]
        if text.startswith("["):
            try:
                return cls.parse(json.loads(text))
            except json.JSONDecodeError:
                pass
        elif text.startswith("slice:") and text.count(":") == 2:
            start, stop = text.split(":")[1:]
            try:
                return cls("slice", start=int(start) if start else None, stop=int(stop) if stop else None)
            except ValueError:
                pass
        elif text.startswith("frame:"):
            try:
                return cls("frame", frame=int(text.split(":", 1)[1]))
            except ValueError:
                pass
        raise SelectionError(f"token selection {text!r} is not one of: {TOKEN_CHOICES}")

    @property
    def needs_token_types(self) -> bool:
        return self.kind in _TYPE_BASED

    def __str__(self) -> str:
        if self.kind == "positions":
            return json.dumps(list(self.positions))
        if self.kind == "slice":
            start, stop = ("" if bound is None else bound for bound in (self.start, self.stop))
            return f"slice:{start}:{stop}"
        if self.kind == "frame":
            return f"frame:{self.frame}"
        return self.kind


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class _Layout:
    """Token types and attention mask of the sequence one forward call ran on."""

    mask: torch.Tensor  # [B, L] bool
    types: torch.Tensor | None  # [B, L] long, None when unknown
    starts_at_bos: bool  # column 0 is the sequence start (False for a decode step's window)
    step: int

    @classmethod
    def build(
        cls, token_type_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, step: int
    ) -> _Layout | None:
        if token_type_ids is None and attention_mask is None:
            return None
        given = [t for t in (token_type_ids, attention_mask) if t is not None]
        if any(t.ndim != 2 for t in given) or len({tuple(t.shape) for t in given}) > 1:
            raise SelectionError(
                "token_type_ids and attention_mask must both be [batch, seq_len] and of the same shape, got "
                + ", ".join(str(tuple(t.shape)) for t in given)
            )
        shape = given[0].shape
        mask = torch.ones(shape, dtype=torch.bool) if attention_mask is None else attention_mask.bool().cpu()
        types = None if token_type_ids is None else token_type_ids.long().cpu()
        if step > 0:  # generated tokens are language-typed and attended
            mask = torch.cat([mask, torch.ones(shape[0], step, dtype=torch.bool)], dim=1)
            if types is not None:
                types = torch.cat([types, torch.zeros(shape[0], step, dtype=torch.long)], dim=1)
        return cls(mask, types, True, step)

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    def covering(self, positions: int) -> _Layout | None:
        """The layout of a row with `positions` positions, or None when the row is not on the token axis."""
        if positions == self.length:
            return self
        if self.step > 0 and positions < self.length:  # a cached decode step sees only the newest tokens
            types = None if self.types is None else self.types[:, -positions:]
            return _Layout(self.mask[:, -positions:], types, False, self.step)
        return None


def _rows(x: torch.Tensor, batch_size: int | None, seq_len: int | None) -> list[torch.Tensor]:
    """Split `x` into rows shaped [positions, *features] following the module docstring's axis rules."""
    if batch_size is None:
        if x.ndim >= 3:
            batch_size = x.shape[0]
        else:  # [L, D] or [L]: one unbatched sequence
            return [x.reshape(1) if x.ndim == 0 else x]
    if x.ndim >= 1 and x.shape[0] == batch_size:
        if x.ndim == 3:
            return list(x.unbind(0))
        if x.ndim == 2 and x.shape[1] == seq_len:
            return list(x.unbind(0))
        return [row.unsqueeze(0) for row in x.unbind(0)]
    if batch_size == 1:  # the module dropped the batch axis of a single row
        return [x if x.ndim in (1, 2) else x.unsqueeze(0)]
    raise SelectionError(
        f"output of shape {tuple(x.shape)} does not start with the batch axis ({batch_size} rows), so its "
        "rows cannot be told apart; capture this module with batch_size 1"
    )


def _vision_runs(types: torch.Tensor) -> list[tuple[int, int]]:
    """(first, last) index of every run of vision-typed positions."""
    vision = (types == VISION_TOKEN_TYPE).tolist()
    runs: list[tuple[int, int]] = []
    for i, is_vision in enumerate(vision):
        if is_vision and (i == 0 or not vision[i - 1]):
            runs.append((i, i))
        elif is_vision:
            runs[-1] = (runs[-1][0], i)
    return runs


def _row_positions(
    spec: TokenSpec, n: int, types: torch.Tensor | None, starts_at_bos: bool, row: int
) -> list[int]:
    """Indices `spec` picks in one unpadded row of `n` positions."""
    if spec.kind == "all":
        return list(range(n))
    if spec.kind == "last":
        return [n - 1] if n else []
    if spec.kind == "slice":
        return list(range(n))[spec.start : spec.stop]
    if spec.kind == "positions":
        bad = [p for p in spec.positions if not -n <= p < n]
        if bad:
            raise SelectionError(
                f"token positions {bad} are out of range for row {row}, which has {n} real tokens"
            )
        return [p % n for p in spec.positions]
    assert types is not None  # callers check needs_token_types first
    if spec.kind == "image":
        return (types == VISION_TOKEN_TYPE).nonzero().flatten().tolist()
    if spec.kind == "text":
        text = (types != VISION_TOKEN_TYPE).nonzero().flatten().tolist()
        return [p for p in text if p != 0] if starts_at_bos else text
    runs = _vision_runs(types)
    if spec.kind == "boi":
        return [first for first, _ in runs]
    if spec.kind == "eoi":
        return [last for _, last in runs]
    if not -len(runs) <= spec.frame < len(runs):
        return []
    first, last = runs[spec.frame]
    return list(range(first, last + 1))


def select_tokens(
    x: torch.Tensor,
    spec: TokenSpec | str | int | Sequence[int],
    *,
    token_type_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    step: int = 0,
) -> list[torch.Tensor]:
    """Per row of `x`, the selected positions as a [n_selected, *features] tensor (n_selected may be 0).

    `token_type_ids` / `attention_mask` ([B, L], of the prompt) give the batch size, padding and token types;
    without them a 3-D+ `x` is taken as batched and a 1-D / 2-D one as a single unpadded sequence.
    """
    spec = TokenSpec.parse(spec)
    layout = _Layout.build(token_type_ids, attention_mask, step)
    if spec.needs_token_types and (layout is None or layout.types is None):
        raise SelectionError(f"token selection {str(spec)!r} needs token_type_ids")
    rows = _rows(x, layout and layout.batch_size, layout and layout.length)
    selected = []
    for r, row in enumerate(rows):
        applies = layout and layout.covering(row.shape[0])
        types, starts_at_bos = None, False
        if applies:
            keep = applies.mask[r].to(row.device)
            row = row[keep]
            types = None if applies.types is None else applies.types[r][applies.mask[r]]
            starts_at_bos = applies.starts_at_bos
        elif spec.needs_token_types:
            raise SelectionError(
                f"token selection {str(spec)!r} needs the output's positions to be the prompt's tokens, but "
                f"this output has {row.shape[0]} positions per row and the prompt {layout.length} tokens "
                "(e.g. a vision tower output); use all, last, [positions] or slice:START:STOP here"
            )
        index = _row_positions(spec, row.shape[0], types, starts_at_bos, r)
        selected.append(row[torch.tensor(index, dtype=torch.long, device=row.device)])
    return selected


def token_positions(
    spec: TokenSpec | str | int | Sequence[int],
    *,
    token_type_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    step: int = 0,
) -> list[torch.Tensor]:
    """Per row, the positions (in the unpadded sequence) that `spec` selects from an LM-sequence output:
    what a store records next to the tensors, e.g. where the image tokens were."""
    layout = _Layout.build(token_type_ids, attention_mask, step)
    if layout is None:
        raise SelectionError("token_positions needs token_type_ids or attention_mask to know the sequence")
    positions = torch.arange(layout.length).expand(layout.batch_size, -1)
    return select_tokens(
        positions, spec, token_type_ids=token_type_ids, attention_mask=attention_mask, step=step
    )


def pool(x: torch.Tensor, method: Pooling | str) -> torch.Tensor:
    """Pool one row's selection [n, *features] over its positions (axis 0), never over features."""
    if method not in POOLING_CHOICES:
        raise SelectionError(f"pooling {method!r} is not one of: {' | '.join(POOLING_CHOICES)}")
    if method == "none":
        return x
    if x.shape[0] == 0:
        raise SelectionError(f"cannot {method}-pool an empty selection (no token of this row was selected)")
    if method == "mean":
        return x.mean(0) if x.is_floating_point() or x.is_complex() else x.double().mean(0)
    if method == "max":
        return x.amax(0)
    return x[-1]


def select_and_pool(
    x: torch.Tensor,
    tokens: TokenSpec | str | int | Sequence[int],
    pooling: Pooling | str,
    *,
    token_type_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    step: int = 0,
) -> list[torch.Tensor | None]:
    """`select_tokens` then `pool` per row; None for a row with nothing selected (e.g. `image` on a text-only
    prompt), so a writer can skip it."""
    rows = select_tokens(x, tokens, token_type_ids=token_type_ids, attention_mask=attention_mask, step=step)
    return [pool(row, pooling) if row.shape[0] else None for row in rows]
