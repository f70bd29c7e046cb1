"""``Intervene``: a context manager that applies edits to a model's forward passes and always removes its hooks.

>>> with Intervene(pipe.model, [Ablate("model.layers.1", tokens="image")]) as run:  # doctest: +SKIP
...     answer = pipe.ask("What is it?", images=[image])   # the engine, or model.generate(), or model(...)
>>> run.applied  # positions changed per edit  # doctest: +SKIP

Every forward call of the model is read first (a pre-hook on the model): its attention mask and token types give
each column's position and type (:class:`~.layout.CallLayout`), so the edits select the same tokens whether a row
was left-padded in a batch or run alone, at the prefill and at every decode step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from coglens.lens.capture.modules import ModuleMatchError, resolve_modules
from coglens.lens.capture.select import TokenSpec
from coglens.modeling.attention import causal_bias
from coglens.modeling.language import VisionExpertAttention

from .edits import Edit, Knockout, TensorEdit, apply_edit, runs_at
from .layout import CallLayout, InterventionError, _select

_BIAS_ARG = 3  # VisionExpertAttention.forward(hidden, vision_mask, position_ids, attention_mask, ...)


class Intervene:
    """Apply ``edits`` to every forward pass of ``model`` while the context is open.

    A tensor edit's ``module`` is a module name or pattern (as in lens configs; a pattern edits every module it
    matches). ``applied`` counts the positions each edit changed (tensor edits) or the query positions it
    blocked (knockouts), summed over calls: an edit that never fired shows 0.
    """

    def __init__(self, model: nn.Module, edits: Sequence[Edit]) -> None:
        self.model = model
        self.edits = list(edits)
        self.applied = [0] * len(self.edits)
        self._targets: list[tuple[int, str, nn.Module]] = []
        self._attention: list[tuple[int, int, VisionExpertAttention]] = []
        layers = sorted((m.layer_idx, m) for m in model.modules() if isinstance(m, VisionExpertAttention))
        for index, edit in enumerate(self.edits):
            if isinstance(edit, Knockout):
                chosen = _layers(edit, len(layers))
                _heads(edit, int(getattr(model.config, "num_attention_heads", 0)) or layers[0][1].num_heads)
                self._attention += [(index, i, module) for i, module in layers if i in chosen]
                continue
            try:
                specs = resolve_modules(model, [edit.module])
            except ModuleMatchError as exc:
                raise InterventionError(f"{type(edit).__name__.lower()} {edit.module}: {exc}") from exc
            self._targets += [(index, spec.name, spec.module) for spec in specs]
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._layout: CallLayout | None = None
        self._past_types: torch.Tensor | None = None
        self._step = -1

    @property
    def records(self) -> list[dict[str, Any]]:
        """What was done: each edit described, with the positions it changed (what a lens run stores)."""
        return [{**edit.describe(), "applied": count} for edit, count in zip(self.edits, self.applied, strict=True)]

    def __enter__(self) -> Intervene:
        if self._handles:
            raise RuntimeError("this Intervene is already open; open a new one instead of nesting it")
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._read_call, with_kwargs=True))
            self._handles.append(self.model.register_forward_hook(self._end_call, always_call=True))
            for index, name, module in self._targets:
                edit = self.edits[index]
                assert not isinstance(edit, Knockout)
                if edit.io == "input":
                    self._handles.append(module.register_forward_pre_hook(self._input_hook(index, name),
                                                                          with_kwargs=True))
                else:
                    self._handles.append(module.register_forward_hook(self._output_hook(index, name, module)))
            for index, _, module in self._attention:
                self._handles.append(module.register_forward_pre_hook(self._knockout_hook(index, module),
                                                                      with_kwargs=True))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._remove()
        self._layout = None

    def _remove(self) -> None:
        for handle in reversed(self._handles):
            handle.remove()
        self._handles.clear()

    # --- hooks ----------------------------------------------------------------------------------------------

    def _read_call(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        inputs = dict(kwargs)
        if args:
            inputs.setdefault("input_ids", args[0])
        layout = CallLayout.of_call(inputs, self._past_types)
        self._step = 0 if layout.prefill else self._step + 1
        self._layout = dataclasses.replace(layout, step=self._step)

    def _end_call(self, module: nn.Module, args: tuple, output: Any) -> None:
        """A module run on its own after this (not through the model) must not see this call's layout; the
        types stay for the next decode step."""
        if self._layout is not None:
            self._past_types = self._layout.types
        self._layout = None

    def _current(self, what: str) -> CallLayout:
        if self._layout is None:
            raise InterventionError(f"{what}: the module ran outside a forward pass of the model given to Intervene")
        return self._layout

    def _selected(self, edit: TensorEdit, x: torch.Tensor, name: str, last_only: bool) -> list[torch.Tensor] | None:
        """Per row of ``x``, the indices on its second axis the edit changes, in the selection's order; None when
        the edit does not run at this step. ``last_only``: the module may compute only the last positions of the
        call (``lm_head`` under ``logits_to_keep``), aligned to the right."""
        what = f"{type(edit).__name__.lower()} {name}"
        layout = self._current(what)
        if not runs_at(edit.steps, layout.step == 0):
            return None
        spec = edit.tokens
        assert isinstance(spec, TokenSpec)
        if x.dim() < 2:
            raise InterventionError(f"{what}: the tensor has shape {tuple(x.shape)}; it needs a row and a position "
                                    "axis to edit")
        on_tokens = x.shape[0] == layout.batch_size and (
            x.shape[1] == layout.window or (last_only and x.shape[1] < layout.window))
        if on_tokens:
            picked = layout.queries(spec, what)[:, -x.shape[1]:].to(x.device)
            positions = layout.positions[:, -x.shape[1]:].to(x.device)
        elif spec.needs_token_types:  # not the token axis (e.g. a vision tower's patches)
            raise InterventionError(
                f"{what}: the output has shape {tuple(x.shape)}, not one position per prompt token, so the token "
                f"selection {str(spec)!r} cannot apply; use all, [positions] or slice:A:B on it")
        else:
            positions = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
            picked = _select(spec, positions, None)
        if spec.kind != "positions":
            return [row.nonzero().flatten() for row in picked]
        # [p, q, ...] in the order given: a value captured at the same selection lines up row by row
        lengths = (layout.positions.max(dim=1).values + 1).tolist() if on_tokens else [x.shape[1]] * x.shape[0]
        columns = []
        for row in range(x.shape[0]):
            wanted = [p if p >= 0 else lengths[row] + p for p in spec.positions]
            found = [(positions[row] == p).nonzero().flatten() for p in wanted]
            columns.append(torch.cat([f[:1] for f in found]) if found else positions.new_zeros(0))
        return columns

    def _edit(self, index: int, name: str, x: Any, last_only: bool = False) -> Any:
        edit = self.edits[index]
        assert not isinstance(edit, Knockout)
        tensor, rebuild = _main_tensor(x)
        if tensor is None:
            raise InterventionError(f"{type(edit).__name__.lower()} {name}: the module's {edit.io} holds no tensor")
        columns = self._selected(edit, tensor, name, last_only)
        if columns is None:
            return None
        edited, count = apply_edit(edit, tensor, columns, name)
        self.applied[index] += count
        return rebuild(edited) if count else None

    def _output_hook(self, index: int, name: str, module: nn.Module) -> Callable[..., Any]:
        last_only = module is self.model.get_output_embeddings()  # logits_to_keep: only the last positions

        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            return self._edit(index, name, output, last_only)

        return hook

    def _input_hook(self, index: int, name: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
            if not args:
                raise InterventionError(f"{type(self.edits[index]).__name__.lower()} {name}: the module was called "
                                        "with keyword arguments only, so it has no positional input to edit; edit "
                                        "the output of the module before it instead")
            edited = self._edit(index, name, args[0])
            return None if edited is None else ((edited, *args[1:]), kwargs)

        return hook

    def _knockout_hook(self, index: int, attention: VisionExpertAttention) -> Callable[..., Any]:
        edit = self.edits[index]
        assert isinstance(edit, Knockout)

        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
            layout = self._current(f"knockout in layer {attention.layer_idx}")
            if not runs_at(edit.steps, layout.step == 0):
                return None
            hidden = args[0]
            assert isinstance(edit.queries, TokenSpec) and isinstance(edit.keys, TokenSpec)
            queries = layout.queries(edit.queries, "knockout queries").to(hidden.device)
            keys = layout.keys(edit.keys, "knockout keys").to(hidden.device)
            blocked = queries[:, :, None] & keys[:, None, :]  # [B, L, T]
            if not bool(blocked.any()):
                return None
            b, length, total = blocked.shape
            bias = args[_BIAS_ARG]
            if bias is None:
                bias = causal_bias(length, total, hidden.dtype, hidden.device)
            heads = _heads(edit, attention.num_heads)
            bias = bias.expand(b, attention.num_heads, length, total).clone()
            # half the dtype's minimum: blocked keys stay above future and padding ones (the minimum), so a query
            # whose every visible key is blocked spreads over those keys, never over the future
            floor = torch.finfo(bias.dtype).min / 2
            chosen = bias[:, heads]
            bias[:, heads] = chosen.masked_fill(blocked[:, None] & (chosen > floor), floor)
            self.applied[index] += int(blocked.any(dim=2).sum())
            return (*args[:_BIAS_ARG], bias, *args[_BIAS_ARG + 1:]), kwargs

        return hook


def _main_tensor(value: Any) -> tuple[torch.Tensor | None, Callable[[torch.Tensor], Any]]:
    """The tensor an edit changes (a tensor, or the first element of a tuple/list output) and how to put an
    edited one back."""
    if isinstance(value, torch.Tensor):
        return value, lambda t: t
    if isinstance(value, tuple | list) and value and isinstance(value[0], torch.Tensor):
        return value[0], lambda t: type(value)((t, *value[1:]))
    return None, lambda t: t


def _layers(edit: Knockout, count: int) -> set[int]:
    return set(_indices(edit.layers, count, "layers", "this model has decoder layers"))


def _heads(edit: Knockout, count: int) -> list[int]:
    return _indices(edit.heads, count, "heads", "these layers have heads")


def _indices(chosen: Sequence[int] | None, count: int, what: str, has: str) -> list[int]:
    """``chosen`` (None: all ``count``), each checked to exist."""
    if chosen is None:
        return list(range(count))
    bad = [i for i in chosen if not 0 <= i < count]
    if bad:
        raise InterventionError(f"knockout: {what} {bad} do not exist; {has} 0..{count - 1}")
    return [int(i) for i in chosen]
