"""Capture module inputs/outputs during forward passes and generation, with hooks that cannot leak.

``Trace`` registers its hooks in ``__enter__`` and removes them in ``__exit__``, exception or not. A hook only
picks the tensor, optionally reduces it on its device (token selection, so that a [B, 2306, 128256] lm_head
output is not copied whole), then detaches and copies it to CPU (asynchronously from CUDA; ``__exit__`` waits
for the copies). No I/O happens in a hook: captures go to memory or to ``on_capture``, and a writer stores
them afterwards.

What is captured from a module call (its *path*) is picked by :mod:`coglens.lens.capture.paths`.

Every forward call of the traced model starts a new *step*: step 0 is the prefill, step k the k-th decode
call of a generation. ``steps="prefill"`` skips later steps in the hooks themselves.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from coglens.lens.capture.choices import CAPTURE_CHOICES, IO, STEP_CHOICES, Pooling
from coglens.lens.capture.modules import ModuleSpec, describe_inputs, describe_value, resolve_modules
from coglens.lens.capture.paths import CapturePath, pick_tensor, signature_of
from coglens.lens.capture.select import TokenSpec, select_and_pool

logger = logging.getLogger(__name__)


class StopForward(Exception):
    """Raised by a hook once every capture point has fired in the prefill; only its own Trace swallows it."""

    def __init__(self, trace: Trace) -> None:
        super().__init__("all requested modules captured; forward stopped early")
        self.trace = trace


@dataclass(frozen=True)
class CapturePoint:
    """One thing to capture: a module's input or output, by default or along an explicit path."""

    spec: ModuleSpec
    io: IO
    path: CapturePath | None = None

    @property
    def module(self) -> str:
        return self.spec.name

    @property
    def key(self) -> str:
        """``name`` for the default output, ``name.input`` for the default input, ``name:path`` otherwise."""
        if self.path is not None:
            return f"{self.spec.name}:{self.path.text}"
        return self.spec.name if self.io == "output" else f"{self.spec.name}.input"


@dataclass(frozen=True)
class Capture:
    """A captured value on CPU: the whole tensor, or after a reducer per-row tensors (None: none selected)."""

    point: CapturePoint
    step: int  # 0 = prefill
    call: int  # 0 unless the module ran more than once in this step
    value: torch.Tensor | list[torch.Tensor | None]

    @property
    def key(self) -> str:
        return self.point.key


Reducer = Callable[[CapturePoint, int, torch.Tensor], torch.Tensor | Sequence[torch.Tensor | None]]


def token_reducer(
    *,
    token_type_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    tokens: TokenSpec | str = "all",
    pooling: Pooling | str = "none",
) -> Reducer:
    """A reducer that selects tokens and pools per row on the device; an entry's own tokens/pooling win."""

    def reduce(point: CapturePoint, step: int, x: torch.Tensor) -> list[torch.Tensor | None]:
        entry = point.spec.entry
        return select_and_pool(
            x,
            entry.tokens or tokens,
            entry.pooling or pooling,
            token_type_ids=token_type_ids,
            attention_mask=attention_mask,
            step=step,
        )

    return reduce


def _to_cpu(tensor: torch.Tensor) -> torch.Tensor:
    """A detached CPU copy that later in-place updates of the model's tensor cannot change."""
    tensor = tensor.detach()
    if tensor.device.type == "cpu":
        return tensor.clone()
    return tensor.to("cpu", non_blocking=tensor.device.type == "cuda")


def _capture_points(model: nn.Module, specs: Sequence[ModuleSpec | str], capture: str) -> list[CapturePoint]:
    """One point per module and io (``both`` = input and output), or per explicit path; duplicates dropped."""
    resolved = [s for s in specs if isinstance(s, ModuleSpec)]
    names = [s for s in specs if isinstance(s, str)]
    if names:
        resolved += resolve_modules(model, [re.escape(n) for n in names])
    ios: tuple[IO, ...] = ("input", "output") if capture == "both" else (capture,)  # type: ignore[assignment]
    points: dict[str, CapturePoint] = {}
    for spec in resolved:
        path = None if spec.entry.path is None else CapturePath.parse(spec.entry.path)
        if path is None:
            candidates = [CapturePoint(spec, io) for io in ios]
        else:  # a bare "output" / "input" is the default pick of that side
            candidates = [CapturePoint(spec, path.io, path if path.accessors else None)]
        for point in candidates:
            points.setdefault(point.key, point)
    return list(points.values())


class Trace:
    """Capture `specs` (module specs, or exact module names) of `model` while the context is open.

    ``with Trace(model, ["model.layers.0"]) as trace: model(**inputs)`` then ``trace.get("model.layers.0")``.
    `on_capture` receives each :class:`Capture` instead of the in-memory list; it runs inside the hook, so it
    must only keep the capture (no I/O), and must not read CUDA-copied tensors before the context exits.
    `reduce(point, step, tensor)` shrinks a tensor on its device before the copy (see :func:`token_reducer`).
    `stop=True` (prefill only) ends the forward once every point has fired; ``__exit__`` swallows that stop.
    """

    def __init__(
        self,
        model: nn.Module,
        specs: Sequence[ModuleSpec | str],
        *,
        capture: str = "output",
        steps: str = "all",
        on_capture: Callable[[Capture], None] | None = None,
        reduce: Reducer | None = None,
        stop: bool = False,
    ) -> None:
        if capture not in CAPTURE_CHOICES:
            raise ValueError(f"capture={capture!r} is not one of: {' | '.join(CAPTURE_CHOICES)}")
        if steps not in STEP_CHOICES:
            raise ValueError(f"steps={steps!r} is not one of: {' | '.join(STEP_CHOICES)}")
        if stop and steps != "prefill":
            raise ValueError("stop=True ends the forward after the prefill, so it needs steps='prefill'")
        self.model = model
        self.points = _capture_points(model, specs, capture)
        self.steps = steps
        self.stop = stop
        self.captures: list[Capture] = []
        self._emit = on_capture or self.captures.append
        self._reduce = reduce
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._step = -1
        self._calls: dict[int, int] = {}  # point index -> times it fired in the current step
        self._warned: set[int] = set()
        self._cuda_devices: set[torch.device] = set()

    @property
    def step(self) -> int:
        """The current forward call of the model: -1 before the first, 0 during the prefill."""
        return self._step

    def __enter__(self) -> Trace:
        if self._handles:
            raise RuntimeError("this Trace is already open; open a new Trace instead of nesting the same one")
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._start_step))
            for index, point in enumerate(self.points):
                hook = self._hook(index, point)
                module = point.spec.module
                if point.io == "input":  # before the forward, so in-place updates inside it cannot show
                    handle = module.register_forward_pre_hook(
                        lambda m, args, kwargs, hook=hook: hook(m, args, kwargs, None), with_kwargs=True
                    )
                else:
                    handle = module.register_forward_hook(hook, with_kwargs=True)
                self._handles.append(handle)
        except BaseException:
            self._remove_hooks()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        self._remove_hooks()
        for device in self._cuda_devices:  # async device-to-host copies must land before anyone reads them
            torch.cuda.synchronize(device)
        return isinstance(exc, StopForward) and exc.trace is self

    def _remove_hooks(self) -> None:
        for handle in reversed(self._handles):
            handle.remove()
        self._handles.clear()

    def _start_step(self, module: nn.Module, args: tuple) -> None:
        self._step += 1
        self._calls.clear()

    def _hook(self, index: int, point: CapturePoint) -> Callable[[nn.Module, tuple, dict, Any], None]:
        signature = signature_of(point.spec.module)

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            step = max(self._step, 0)  # a submodule run on its own counts as the prefill
            if step > 0 and self.steps == "prefill":
                return
            call = self._calls.get(index, 0)
            self._calls[index] = call + 1
            tensor = pick_tensor(point.path, point.io, signature, args, kwargs, output, module=point.module)
            if tensor is not None:
                self._emit(Capture(point, step, call, self._copy(point, step, tensor)))
            elif index not in self._warned:
                self._warned.add(index)
                shown = describe_inputs(args, kwargs) if point.io == "input" else describe_value(output)
                logger.warning(
                    "%s: the module's %s holds no tensor (%s); nothing captured", point.key, point.io, shown
                )
            if self.stop and step == 0 and len(self._calls) == len(self.points):
                raise StopForward(self)

        return hook

    def _copy(
        self, point: CapturePoint, step: int, tensor: torch.Tensor
    ) -> torch.Tensor | list[torch.Tensor | None]:
        if tensor.device.type == "cuda":
            self._cuda_devices.add(tensor.device)
        if self._reduce is None:
            return _to_cpu(tensor)
        reduced = self._reduce(point, step, tensor.detach())
        if isinstance(reduced, torch.Tensor):
            return _to_cpu(reduced)
        return [None if row is None else _to_cpu(row) for row in reduced]

    def get(self, key: str, step: int = 0, call: int = 0) -> torch.Tensor | list[torch.Tensor | None]:
        """The value captured for `key` (see :attr:`CapturePoint.key`) at `step`, from the in-memory list."""
        for capture in self.captures:
            if capture.key == key and capture.step == step and capture.call == call:
                return capture.value
        keys = sorted({c.key for c in self.captures})
        raise KeyError(f"nothing captured for {key!r} at step {step}, call {call}; captured keys: {keys}")
