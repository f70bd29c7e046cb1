"""What a capture point takes from a module call: the default pick, or an explicit path.

By default the first tensor of the output (a decoder layer's hidden state, a ``ModelOutput``'s first non-None
field) or of the input (the first tensor argument, in signature order). An explicit path starts at ``output`` or
``input`` and goes on with ``[i]``, ``.name`` or ``['key']``: ``output[0]``, ``output.last_hidden_state``,
``input[1]`` (the second positional argument), ``input.hidden_states`` (that argument, whether passed by position
or by keyword).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import torch
from torch import nn

from coglens.lens.capture.choices import IO, IO_VALUES
from coglens.lens.capture.modules import describe_inputs, describe_value

_ACCESSOR = re.compile(r"\[(-?\d+)\]|\.([A-Za-z_]\w*)|\[(['\"])(.*?)\3\]")
_MISSING = object()


class CapturePathError(ValueError):
    """A capture path that is malformed, or leads to no tensor in what the module received or returned."""


@dataclass(frozen=True)
class CapturePath:
    """A parsed path such as ``output[0]`` or ``input.hidden_states``."""

    io: IO
    accessors: tuple[int | str, ...]
    text: str

    @classmethod
    def parse(cls, text: str) -> CapturePath:
        root = next((r for r in IO_VALUES if text.startswith(r)), None)
        rest = text[len(root) :] if root else ""
        accessors: list[int | str] = []
        while root and rest:
            match = _ACCESSOR.match(rest)
            if not match:
                break
            index, attribute, _, key = match.groups()
            accessors.append(int(index) if index is not None else attribute if attribute is not None else key)
            rest = rest[match.end() :]
        if not root or rest:
            raise CapturePathError(
                f"capture path {text!r} is malformed: it must start with 'output' or 'input' followed by "
                "[i], .name or ['key'] parts, e.g. output[0], output.last_hidden_state, input.hidden_states"
            )
        return cls(root, tuple(accessors), text)  # type: ignore[arg-type]


def _first_tensor(value: Any, depth: int = 0) -> torch.Tensor | None:
    """Depth-first first tensor of a (nested) output: a tuple's first, a dataclass's first non-None field."""
    if isinstance(value, torch.Tensor):
        return value
    if depth > 4:
        return None
    if is_dataclass(value) and not isinstance(value, type):
        items: Sequence[Any] = [getattr(value, f.name) for f in fields(value)]
    elif isinstance(value, Mapping):
        items = list(value.values())
    elif isinstance(value, (tuple, list)):
        items = value
    else:
        return None
    for item in items:
        found = _first_tensor(item, depth + 1)
        if found is not None:
            return found
    return None


def _step_into(value: Any, accessor: int | str) -> Any:
    if isinstance(accessor, int):
        return value[accessor]
    if isinstance(value, Mapping) and accessor in value:
        return value[accessor]
    return getattr(value, accessor)


def pick_tensor(
    path: CapturePath | None,
    io: IO,
    signature: inspect.Signature | None,
    args: tuple,
    kwargs: dict,
    output: Any,
    *,
    module: str,
) -> torch.Tensor | None:
    """The tensor a call of `module` gives along `path` (None: the default pick of `io`, which may find no tensor
    and returns None then); an explicit path that leads to no tensor raises `CapturePathError`."""
    if path is None and io == "input":
        return _first_tensor(list(_bound_inputs(signature, args, kwargs).values()))
    if path is None:
        return _first_tensor(output)
    value: Any = output
    accessors = path.accessors
    try:
        if io == "input":
            first, accessors = accessors[0], accessors[1:]
            by_name = isinstance(first, str)
            value = _bound_inputs(signature, args, kwargs)[first] if by_name else args[first]
        for accessor in accessors:
            value = _step_into(value, accessor)
    except (IndexError, KeyError, AttributeError, TypeError):
        value = _MISSING
    if not isinstance(value, torch.Tensor):
        shown = describe_inputs(args, kwargs) if io == "input" else describe_value(output)
        found = "nothing" if value is _MISSING else describe_value(value)
        raise CapturePathError(
            f"capture path {path.text!r} of module {module!r} leads to {found}, not a tensor; the module's {io} is "
            f"{shown}"
        )
    return value



def signature_of(module: nn.Module) -> inspect.Signature | None:
    """The signature of the module's forward, to find its arguments by name; None when it has none."""
    try:
        return inspect.signature(module.forward)
    except (TypeError, ValueError):  # some builtins have none
        return None


def _bound_inputs(signature: inspect.Signature | None, args: tuple, kwargs: dict) -> dict[str, Any]:
    """A call's arguments by parameter name, in signature order (``**kwargs`` contents merged in); without a
    usable signature, positional arguments by index then keyword ones."""
    try:
        bound = signature.bind_partial(*args, **kwargs).arguments if signature else None
    except TypeError:
        bound = None
    if bound is None:
        return {**{str(i): a for i, a in enumerate(args)}, **kwargs}
    merged: dict[str, Any] = {}
    for name, value in bound.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            merged.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            merged.update({f"{name}[{i}]": v for i, v in enumerate(value)})
        else:
            merged[name] = value
    return merged
