"""Trace: what hooks capture (default picks, paths, inputs), that they always go away, steps, early stop."""

from __future__ import annotations

import logging

import pytest
import torch
from lens_toy import ToyLM
from torch import nn

from coglens.lens.capture.modules import ModuleEntry, ModuleMatchError, resolve_modules
from coglens.lens.capture.paths import CapturePath, CapturePathError
from coglens.lens.capture.select import TokenSpec
from coglens.lens.capture.trace import StopForward, Trace, token_reducer

IDS = torch.tensor([[1, 2, 3], [4, 5, 6]])


@pytest.fixture
def model():
    return ToyLM().eval()


def _no_hooks(model: nn.Module) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@torch.no_grad()
def _reference(model: ToyLM, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same computation by hand, module by module."""
    embed = model.embed(ids)
    first = model.layers[0].lin(embed)
    second = model.layers[1].lin(first)
    norm1 = model.norm(first + second)
    return {
        "embed": embed,
        "layers.0": first,
        "layers.1": second,
        "norm1": norm1,
        "head": model.head(model.norm(norm1)),
    }


@torch.no_grad()
def test_default_picks_and_copies(model):
    ref = _reference(model, IDS)
    with Trace(model, ["layers.0", "layers.1", "head"], capture="both") as trace:
        model(IDS)
    assert [c.key for c in trace.captures] == [
        "layers.0.input",
        "layers.0",
        "layers.1.input",
        "layers.1",
        "head.input",
        "head",
    ]
    torch.testing.assert_close(trace.get("layers.0.input"), ref["embed"])
    # layers.0's output was changed in place after its hook ran: the capture is a copy of what it returned
    torch.testing.assert_close(trace.get("layers.0"), ref["layers.0"])
    torch.testing.assert_close(trace.get("layers.1"), ref["layers.1"])
    torch.testing.assert_close(trace.get("head"), ref["head"])
    assert all(c.value.device.type == "cpu" and not c.value.requires_grad for c in trace.captures)
    assert _no_hooks(model)


@torch.no_grad()
def test_explicit_paths(model):
    ref = _reference(model, IDS)
    layer0_out, layer0_in, hidden, scale = resolve_modules(
        model,
        [
            ModuleEntry("layers.1", path="input.hidden"),  # passed by position, found by name
            ModuleEntry("layers.1", path="input.scale"),
            ModuleEntry("layers.0", path="output[0]"),
            ModuleEntry("layers.0", path="input[0]"),
        ],
    )  # in model order
    with Trace(model, [layer0_out, layer0_in]) as trace:
        model(IDS)
    torch.testing.assert_close(trace.get("layers.0:output[0]"), ref["layers.0"])
    torch.testing.assert_close(trace.get("layers.0:input[0]"), ref["embed"])
    with Trace(model, [hidden]) as trace:
        model(IDS)
    torch.testing.assert_close(trace.get("layers.1:input.hidden"), ref["layers.0"])
    message = r"'input.scale' of module 'layers.1' leads to 1.0, not a tensor"
    with pytest.raises(CapturePathError, match=message), Trace(model, [scale]):
        model(IDS)
    assert _no_hooks(model)


@torch.no_grad()
def test_output_attribute_path_and_none_parts(model):
    class Wrapper(nn.Module):  # the toy LM as a submodule, so its dataclass output can be reached by path
        def __init__(self):
            super().__init__()
            self.lm = model

        def forward(self, ids):
            return self.lm(ids)

    wrapper = Wrapper()
    specs = resolve_modules(
        wrapper, [ModuleEntry("lm", path="output.hidden"), ModuleEntry("lm", path="output.cache")]
    )
    with Trace(wrapper, specs[:1]) as trace:
        out = wrapper(IDS)
    torch.testing.assert_close(trace.get("lm:output.hidden"), out.hidden)
    with Trace(wrapper, ["lm"]) as trace:  # default: the dataclass's first field
        wrapper(IDS)
    torch.testing.assert_close(trace.get("lm"), out.logits)
    message = r"leads to None, not a tensor; the module's output is ToyOutput\("
    with pytest.raises(CapturePathError, match=message), Trace(wrapper, specs[1:]):
        wrapper(IDS)
    assert _no_hooks(wrapper)


def test_malformed_paths():
    for text in ("out[0]", "output[x]", "output.", "output[0", "inputs.x"):
        with pytest.raises(CapturePathError, match="is malformed"):
            CapturePath.parse(text)
    assert CapturePath.parse("output[0]['k'].a[-1]").accessors == (0, "k", "a", -1)


@torch.no_grad()
def test_hooks_removed_after_an_exception(model):
    with pytest.raises(TypeError), Trace(model, ["layers.0", "head"], capture="both") as trace:
        assert not _no_hooks(model)
        model(IDS, scale=None)  # fails inside layers.1
    assert _no_hooks(model)
    with pytest.raises(RuntimeError, match="boom"), Trace(model, ["head"]):
        raise RuntimeError("boom")
    assert _no_hooks(model)
    Trace(model, ["head"])  # built but never entered: registers nothing
    assert _no_hooks(model)
    assert trace.captures and trace.captures[0].key == "layers.0.input"  # captured before the failure


@torch.no_grad()
def test_repeated_calls_and_missing_tensors(model, caplog):
    with Trace(model, ["norm"]) as trace:
        model(IDS)
    ref = _reference(model, IDS)
    assert [(c.step, c.call) for c in trace.captures] == [(0, 0), (0, 1)]
    torch.testing.assert_close(trace.get("norm", call=0), ref["norm1"])
    with pytest.raises(
        KeyError, match=r"nothing captured for 'norm' at step 1, call 0; captured keys: \['norm'\]"
    ):
        trace.get("norm", step=1)

    class NoTensor(nn.Module):
        def forward(self, x):
            return None

    holder = nn.Sequential(NoTensor())
    with caplog.at_level(logging.WARNING), Trace(holder, ["0"]) as trace:
        holder(torch.zeros(1))
        holder(torch.zeros(1))
    assert trace.captures == []
    assert [r.getMessage() for r in caplog.records] == [
        "0: the module's output holds no tensor (None); nothing captured"
    ]


@torch.no_grad()
def test_steps_of_a_generation_loop(model):
    """A toy greedy loop: one prefill call on the prompt, then one call per new token (as with a KV cache)."""

    def generate(ids, n):
        model(ids)
        for _ in range(n):
            model(ids[:, -1:])

    with Trace(model, ["head"]) as trace:
        generate(IDS, 3)
    assert [(c.step, tuple(c.value.shape)) for c in trace.captures] == [
        (0, (2, 3, 10)),
        (1, (2, 1, 10)),
        (2, (2, 1, 10)),
        (3, (2, 1, 10)),
    ]
    assert trace.step == 3
    with Trace(model, ["head", "layers.1"], steps="prefill") as trace:
        generate(IDS, 3)
    assert [(c.key, c.step) for c in trace.captures] == [("layers.1", 0), ("head", 0)]


@torch.no_grad()
def test_early_stop(model):
    calls = []
    model.head.register_forward_hook(lambda *args: calls.append("head"))
    reached = False
    with Trace(model, ["layers.1"], steps="prefill", stop=True) as trace:
        model(IDS)
        reached = True
    assert not reached and calls == []  # the forward ended after layers.1
    assert [c.key for c in trace.captures] == ["layers.1"]
    with pytest.raises(ValueError, match="needs steps='prefill'"):
        Trace(model, ["head"], stop=True)
    with (
        Trace(model, ["layers.0"], steps="prefill", stop=True) as outer,
        pytest.raises(StopForward) as stopped,
        Trace(model, ["layers.1"], steps="prefill", stop=True),
    ):
        model(IDS)
    assert stopped.value.trace is outer  # the inner trace did not swallow the outer one's stop
    assert calls == []


@torch.no_grad()
def test_on_capture_and_reducer(model):
    seen = []
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])  # row 0 left-padded
    specs = resolve_modules(
        model, ["head", ModuleEntry("layers.1", tokens=TokenSpec.parse("last"), pooling="none")]
    )
    reduce = token_reducer(token_type_ids=None, attention_mask=mask, tokens="all", pooling="mean")
    with Trace(model, specs, on_capture=seen.append, reduce=reduce) as trace:
        model(IDS)
    assert trace.captures == [] and [c.key for c in seen] == ["layers.1", "head"]
    ref = _reference(model, IDS)
    layer1, head = seen[0].value, seen[1].value
    torch.testing.assert_close(layer1[0], ref["layers.1"][0, [2]])  # the entry's own tokens/pooling win
    torch.testing.assert_close(head[0], ref["head"][0, 1:].mean(0))  # mean over the real tokens only
    torch.testing.assert_close(head[1], ref["head"][1].mean(0))


def test_arguments_are_checked(model):
    with pytest.raises(ValueError, match="output | input | both"):
        Trace(model, ["head"], capture="outputs")
    with pytest.raises(ValueError, match="prefill | all"):
        Trace(model, ["head"], steps="first")
    with pytest.raises(ModuleMatchError, match="closest names: head"):
        Trace(model, ["heads"])
    trace = Trace(model, ["head"])
    with trace, pytest.raises(RuntimeError, match="already open"):
        trace.__enter__()
    assert _no_hooks(model)
