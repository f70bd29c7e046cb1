"""The interventions: what to change in a forward pass, as plain values (see :class:`~.context.Intervene`).

Tensor edits (:class:`Ablate`, :class:`Steer`, :class:`Patch`) change a module's output (or input) at the selected
tokens; :class:`Knockout` blocks attention from some tokens to others. Each edit has ``steps``: ``prefill`` (the
prompt's forward pass), ``generation`` (every decode step after it) or ``all``. Token selections are the lens's
(``all``, ``last``, ``text``, ``image``, ``boi``, ``eoi``, ``frame:N``, ``[positions]``, ``slice:A:B``; see
:mod:`.layout` for what they mean during generation).

A replacement or steering value is either one vector for every selected token (shape = the module's feature shape,
e.g. ``[hidden]``) or one vector per selected token (``[n_selected, hidden]``, the same n in every row, as the
activation of another input at the same selection is), or a list with one of those per batch row.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from coglens.lens.capture.select import SelectionError, TokenSpec

from .layout import InterventionError

Steps = Literal["prefill", "generation", "all"]
STEPS: tuple[str, ...] = ("prefill", "generation", "all")
ABLATIONS: tuple[str, ...] = ("zero", "mean", "resample")
Value = torch.Tensor | Sequence[torch.Tensor]


def _tokens(value: Any, what: str) -> TokenSpec:
    try:
        return TokenSpec.parse(value)
    except SelectionError as exc:
        raise InterventionError(f"{what}: {exc}") from exc


def _check_common(what: str, steps: str, io: str = "output") -> None:
    if steps not in STEPS:
        raise InterventionError(f"{what}: steps={steps!r} is not one of {', '.join(STEPS)}")
    if io not in ("output", "input"):
        raise InterventionError(f"{what}: io={io!r} is not output or input")


def _as_value(value: Any, what: str) -> Value:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, Sequence) and value and all(isinstance(v, torch.Tensor) for v in value):
        return [v.detach() for v in value]
    raise InterventionError(f"{what}: the value must be a tensor or a list of tensors (one per batch row), got "
                            f"{type(value).__name__}")


@dataclass(frozen=True, eq=False)
class Ablate:
    """Remove what ``module`` computes at ``tokens``: ``zero``; ``mean``: replace with ``value``, the module's
    mean activation (:func:`~.sources.stored_mean`); ``resample``: replace with ``value``, another sample's
    activation (:func:`~.sources.stored_activation`)."""

    module: str
    tokens: TokenSpec | str | int | Sequence[int] = "all"
    mode: str = "zero"
    value: Value | None = None
    io: str = "output"
    steps: str = "all"

    def __post_init__(self) -> None:
        what = f"ablate {self.module}"
        object.__setattr__(self, "tokens", _tokens(self.tokens, what))
        _check_common(what, self.steps, self.io)
        if self.mode not in ABLATIONS:
            raise InterventionError(f"{what}: mode={self.mode!r} is not one of {', '.join(ABLATIONS)}")
        if self.mode == "zero" and self.value is not None:
            raise InterventionError(f"{what}: zero ablation takes no value")
        if self.mode != "zero":
            if self.value is None:
                raise InterventionError(f"{what}: {self.mode} ablation needs the value to put in (a stored mean or "
                                        "another sample's activation; see coglens.lens.intervene.sources)")
            object.__setattr__(self, "value", _as_value(self.value, what))

    def describe(self) -> dict[str, Any]:
        return {"kind": "ablate", "module": self.module, "tokens": str(self.tokens), "mode": self.mode,
                "io": self.io, "steps": self.steps}


@dataclass(frozen=True, eq=False)
class Steer:
    """Add ``alpha * vector`` to what ``module`` computes at ``tokens`` (a steering vector)."""

    module: str
    vector: Value
    alpha: float = 1.0
    tokens: TokenSpec | str | int | Sequence[int] = "all"
    io: str = "output"
    steps: str = "all"

    def __post_init__(self) -> None:
        what = f"steer {self.module}"
        object.__setattr__(self, "tokens", _tokens(self.tokens, what))
        _check_common(what, self.steps, self.io)
        object.__setattr__(self, "vector", _as_value(self.vector, what))
        if not isinstance(self.alpha, numbers.Real) or isinstance(self.alpha, bool) or self.alpha != self.alpha:
            raise InterventionError(f"{what}: alpha must be a number, got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))

    def describe(self) -> dict[str, Any]:
        return {"kind": "steer", "module": self.module, "tokens": str(self.tokens), "alpha": float(self.alpha),
                "io": self.io, "steps": self.steps}


@dataclass(frozen=True, eq=False)
class Patch:
    """Replace what ``module`` computes at ``tokens`` with ``value``: the activation of another input at the same
    selection (activation patching), from a stored run or computed now (:func:`~.sources.capture`). Positions
    count without padding, so a left-padded row takes the value where it would alone."""

    module: str
    value: Value
    tokens: TokenSpec | str | int | Sequence[int] = "all"
    io: str = "output"
    steps: str = "prefill"

    def __post_init__(self) -> None:
        what = f"patch {self.module}"
        object.__setattr__(self, "tokens", _tokens(self.tokens, what))
        _check_common(what, self.steps, self.io)
        object.__setattr__(self, "value", _as_value(self.value, what))

    def describe(self) -> dict[str, Any]:
        return {"kind": "patch", "module": self.module, "tokens": str(self.tokens), "io": self.io,
                "steps": self.steps}


@dataclass(frozen=True, eq=False)
class Knockout:
    """Block attention from ``queries`` to ``keys`` in decoder ``layers`` (indices, or all), for ``heads``
    (indices, or all): those attention scores become the dtype's minimum before the softmax."""

    queries: TokenSpec | str | int | Sequence[int] = "all"
    keys: TokenSpec | str | int | Sequence[int] = "image"
    layers: Sequence[int] | None = None
    heads: Sequence[int] | None = None
    steps: str = "all"

    def __post_init__(self) -> None:
        what = "knockout"
        object.__setattr__(self, "queries", _tokens(self.queries, f"{what} queries"))
        object.__setattr__(self, "keys", _tokens(self.keys, f"{what} keys"))
        _check_common(what, self.steps)
        for name in ("layers", "heads"):
            values = getattr(self, name)
            if values is not None and not (isinstance(values, Sequence) and values
                                           and all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                                   for v in values)):
                raise InterventionError(f"{what}: {name} must be a list of integers (or left out: all), got "
                                        f"{values!r}")

    def describe(self) -> dict[str, Any]:
        return {"kind": "knockout", "queries": str(self.queries), "keys": str(self.keys),
                "layers": None if self.layers is None else list(self.layers),
                "heads": None if self.heads is None else list(self.heads), "steps": self.steps}


TensorEdit = Ablate | Steer | Patch
Edit = Ablate | Steer | Patch | Knockout


def runs_at(steps: str, prefill: bool) -> bool:
    return steps == "all" or (steps == "prefill") == prefill


def apply_edit(edit: TensorEdit, x: torch.Tensor, columns: Sequence[torch.Tensor], name: str) -> tuple[torch.Tensor,
                                                                                                       int]:
    """``x`` with ``edit`` applied at ``columns[row]`` (indices on x's second axis, in the selection's order: a
    per-token value's rows go to them in that order); returns the new tensor and how many positions changed."""
    count = sum(int(c.numel()) for c in columns)
    if count == 0:
        return x, 0
    if isinstance(edit, Ablate) and edit.mode == "zero":
        value: Value = torch.zeros((), dtype=x.dtype, device=x.device)
    elif isinstance(edit, Steer):
        value = edit.vector
    else:
        assert edit.value is not None
        value = edit.value
    out = x.clone()
    for row, cols in enumerate(columns):
        if cols.numel() == 0:
            continue
        row_value = _row_value(value, row, x.shape[0], f"{_name(edit)} at {name}")
        new = _fit(row_value, cols.numel(), x.shape[2:], f"{_name(edit)} at {name}, row {row}").to(x.device, x.dtype)
        if isinstance(edit, Steer):
            out[row, cols] = x[row, cols] + edit.alpha * new
        else:
            out[row, cols] = new.expand(cols.numel(), *x.shape[2:])
    return out, count


def _name(edit: Edit) -> str:
    return type(edit).__name__.lower()


def _row_value(value: Value, row: int, rows: int, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if len(value) != rows:
        raise InterventionError(f"{what}: {len(value)} values for a batch of {rows} rows; give one per row, or one "
                                "tensor for every row")
    return value[row]


def _fit(value: torch.Tensor, n: int, features: torch.Size, what: str) -> torch.Tensor:
    """``value`` as [n or 1, *features]: one vector for every selected token, or one per token."""
    if value.dim() == 0 or tuple(value.shape) == tuple(features):
        return value.reshape(1, *features) if value.dim() else value.expand(1, *features)
    if tuple(value.shape) == (n, *features):
        return value
    raise InterventionError(
        f"{what}: the value has shape {tuple(value.shape)} but {n} token(s) of shape {tuple(features)} are selected; "
        f"give {tuple(features)} (the same for every token) or {(n, *features)} (one per selected token)")
