"""Which modules of a model to capture, and what every module is (class, parameters, what it returns).

Module names are ``model.named_modules()`` paths, e.g. ``model.layers.12``, ``lm_head``,
``model.vision.transformer.layers.62``. A pattern is a Python regular expression that must match a whole
name (VLM-Lens semantics), or with a ``glob:`` prefix an fnmatch pattern (``glob:model.layers.*.mlp``; ``*``
also crosses dots, as in fnmatch). The root module (name ``""``) is never matched.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.table import Table
from torch import nn

from coglens.lens.capture.select import TokenSpec

GLOB_PREFIX = "glob:"
_MAX_ITEMS_SHOWN = 6  # longer tuples/lists (e.g. one KV pair per layer) are summarised
_MAX_DEPTH = 4


class ModuleMatchError(ValueError):
    """A module pattern that is invalid or matches no module of the model."""


@dataclass(frozen=True)
class ModuleEntry:
    """One ``modules:`` item of a lens config: a pattern plus per-module overrides (None = the default)."""

    pattern: str
    tokens: TokenSpec | None = None
    pooling: str | None = None
    path: str | None = None  # what to capture, e.g. "output[0]", "input.hidden_states"


@dataclass(frozen=True)
class ModuleSpec:
    """A concrete module to capture, with the entry that selected it."""

    name: str
    module: nn.Module = field(repr=False, compare=False)
    entry: ModuleEntry


def compile_pattern(pattern: str) -> Callable[[str], bool]:
    """A predicate on module names for `pattern` (regex full match, or ``glob:`` fnmatch)."""
    if pattern.startswith(GLOB_PREFIX):
        glob = pattern[len(GLOB_PREFIX) :]
        return lambda name: fnmatch.fnmatchcase(name, glob)
    try:
        regex = re.compile(pattern)
    except re.error as error:
        raise ModuleMatchError(
            f"module pattern {pattern!r} is not a valid regular expression ({error}); escape literal "
            f"characters or use a '{GLOB_PREFIX}' pattern"
        ) from None
    return lambda name: regex.fullmatch(name) is not None


def _closest(pattern: str, names: Sequence[str]) -> list[str]:
    bare = pattern.removeprefix(GLOB_PREFIX).replace("\\", "")
    return difflib.get_close_matches(bare, names, n=4, cutoff=0.5)


def resolve_modules(model: nn.Module, patterns: Iterable[str | ModuleEntry]) -> list[ModuleSpec]:
    """The modules `patterns` select, in ``named_modules()`` order.

    Every pattern must match something: otherwise one :class:`ModuleMatchError` lists each failing pattern
    with the closest module names, before anything runs. A module selected by several entries is captured once
    per distinct ``path``; the first entry (in config order) gives its settings.
    """
    entries = [p if isinstance(p, ModuleEntry) else ModuleEntry(p) for p in patterns]
    matchers = [compile_pattern(e.pattern) for e in entries]
    named = [(name, module) for name, module in model.named_modules() if name]
    specs: list[ModuleSpec] = []
    seen: set[tuple[str, str | None]] = set()
    matched = [False] * len(entries)
    for name, module in named:
        for i, (entry, matches) in enumerate(zip(entries, matchers, strict=True)):
            if not matches(name):
                continue
            matched[i] = True
            if (name, entry.path) not in seen:
                seen.add((name, entry.path))
                specs.append(ModuleSpec(name, module, entry))
    missing = [e.pattern for e, ok in zip(entries, matched, strict=True) if not ok]
    if missing:
        names = [name for name, _ in named]
        lines = []
        for pattern in missing:
            close = _closest(pattern, names)
            lines.append(f"  {pattern!r}: closest names: {', '.join(close)}" if close else f"  {pattern!r}")
        raise ModuleMatchError(
            "these module patterns match no module of the model (patterns are full-match regular "
            f"expressions, or '{GLOB_PREFIX}' fnmatch patterns; `coglens modules` lists every name):\n"
            + "\n".join(lines)
        )
    return specs


def describe_value(value: Any, depth: int = 0) -> str:
    """A short, recursive description of a module input/output: tensors by shape and dtype, containers by what
    they hold (``None`` parts shown), anything else by class name."""
    if isinstance(value, torch.Tensor):
        return f"Tensor{list(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if depth >= _MAX_DEPTH:
        return type(value).__name__
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # ModelOutput included
        parts = [
            f"{f.name}={describe_value(getattr(value, f.name), depth + 1)}" for f in dataclasses.fields(value)
        ]
        return f"{type(value).__name__}({', '.join(parts)})"
    if isinstance(value, Mapping):
        parts = [f"{k}: {describe_value(v, depth + 1)}" for k, v in list(value.items())[:_MAX_ITEMS_SHOWN]]
        more = f", ... {len(value)} items" if len(value) > _MAX_ITEMS_SHOWN else ""
        return "{" + ", ".join(parts) + more + "}"
    if isinstance(value, (tuple, list)):
        parts = [describe_value(v, depth + 1) for v in value[:_MAX_ITEMS_SHOWN]]
        more = f", ... {len(value)} items" if len(value) > _MAX_ITEMS_SHOWN else ""
        return f"{type(value).__name__}({', '.join(parts)}{more})"
    return type(value).__name__


def describe_inputs(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """Positional then keyword arguments of one call, described like :func:`describe_value`."""
    parts = [describe_value(a, 1) for a in args] + [f"{k}={describe_value(v, 1)}" for k, v in kwargs.items()]
    return f"({', '.join(parts)})"


@dataclass(frozen=True)
class ModuleInfo:
    """One module: name, class, parameter counts and, after a dry run, how often it ran and on/to what."""

    name: str
    class_name: str
    own_parameters: int
    total_parameters: int  # recursive
    calls: int | None = None  # None = no dry run
    input: str | None = None  # of the first call
    output: str | None = None  # of the first call


def describe_modules(model: nn.Module, sample_inputs: Any = None) -> list[ModuleInfo]:
    """Every module of `model` (root first, as ``named_modules()`` lists them).

    With `sample_inputs` (a mapping of keyword arguments, a tuple of positional ones, or one tensor) the model
    runs ONCE without gradients, with a hook on every module recording what it received and returned.
    """
    named = list(model.named_modules())
    seen: dict[str, list[Any]] = {}  # name -> [calls, input description, output description]

    def record(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if name in seen:
                seen[name][0] += 1
            else:
                seen[name] = [1, describe_inputs(args, kwargs), describe_value(output)]

        return hook

    if sample_inputs is not None:
        handles = [module.register_forward_hook(record(name), with_kwargs=True) for name, module in named]
        try:
            with torch.no_grad():
                if isinstance(sample_inputs, Mapping):
                    model(**sample_inputs)
                elif isinstance(sample_inputs, tuple):
                    model(*sample_inputs)
                else:
                    model(sample_inputs)
        finally:
            for handle in reversed(handles):
                handle.remove()
    infos = []
    for name, module in named:
        calls, inp, out = seen.get(name, [0 if sample_inputs is not None else None, None, None])
        infos.append(
            ModuleInfo(
                name=name,
                class_name=type(module).__name__,
                own_parameters=sum(_count(p) for p in module.parameters(recurse=False)),
                total_parameters=sum(_count(p) for p in module.parameters()),
                calls=calls,
                input=inp,
                output=out,
            )
        )
    return infos


def module_table(infos: Sequence[ModuleInfo]) -> Table:
    """A rich table of `infos`; the call/input/output columns appear when a dry run filled them."""
    dry_run = any(info.calls is not None for info in infos)
    table = Table(show_lines=False)
    table.add_column("module")
    table.add_column("class")
    table.add_column("params (own)", justify="right")
    table.add_column("params (total)", justify="right")
    if dry_run:
        table.add_column("calls", justify="right")
        table.add_column("input")
        table.add_column("output")
    for info in infos:
        row = [info.name or "(root)", info.class_name, f"{info.own_parameters:,}"]
        row.append(f"{info.total_parameters:,}")
        if dry_run:
            row += [str(info.calls), info.input or "", info.output or ""]
        table.add_row(*row)
    return table


def module_log_text(infos: Sequence[ModuleInfo]) -> str:
    """VLM-Lens's ``logs/<model_path>.txt`` format: one module name a line, the root's empty name first."""
    return "".join(f"{info.name}\n" for info in infos)


def _count(parameter: torch.Tensor) -> int:
    """Parameters a tensor stands for: a packed 4-bit weight (bitsandbytes) holds two per byte, and knows its
    unpacked shape."""
    quant_state = getattr(parameter, "quant_state", None)
    shape = getattr(quant_state, "shape", None)
    return math.prod(shape) if shape is not None else parameter.numel()
