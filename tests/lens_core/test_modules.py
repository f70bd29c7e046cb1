"""Module matching (regex / glob, errors with suggestions) and module descriptions (with one dry run)."""

from __future__ import annotations

import pytest
import torch
from lens_toy import HIDDEN, VOCAB, ToyLM
from rich.console import Console

from coglens.lens.capture.modules import (
    ModuleEntry,
    ModuleMatchError,
    describe_modules,
    describe_value,
    module_log_text,
    module_table,
    resolve_modules,
)


@pytest.fixture(scope="module")
def model():
    return ToyLM().eval()


def _names(specs):
    return [s.name for s in specs]


def test_regex_is_full_match(model):
    assert _names(resolve_modules(model, [r"layers\.\d"])) == ["layers.0", "layers.1"]
    assert _names(resolve_modules(model, [r"layers\.\d+\.lin", "head"])) == [
        "layers.0.lin",
        "layers.1.lin",
        "head",
    ]
    with pytest.raises(ModuleMatchError, match="'lin'"):
        resolve_modules(model, ["lin"])  # a substring is not a match


def test_glob(model):
    assert _names(resolve_modules(model, ["glob:layers.*"])) == [
        "layers.0",
        "layers.0.lin",
        "layers.1",
        "layers.1.lin",
    ]
    assert _names(resolve_modules(model, ["glob:*.lin"])) == ["layers.0.lin", "layers.1.lin"]


def test_results_follow_model_order_and_are_unique(model):
    specs = resolve_modules(
        model, ["head", "embed", r"layers\.0", "glob:layers.0", ModuleEntry("embed", path="input[0]")]
    )
    assert [(s.name, s.entry.path) for s in specs] == [
        ("embed", None),
        ("embed", "input[0]"),
        ("layers.0", None),
        ("head", None),
    ]
    assert specs[0].module is model.embed


def test_no_match_lists_every_failing_pattern_with_suggestions(model):
    with pytest.raises(ModuleMatchError) as info:
        resolve_modules(model, [r"layers\.2", "head", "glob:layer.*.linn", "zzz"])
    message = str(info.value)
    assert "'layers\\\\.2': closest names: layers.1, layers.0," in message
    assert "'glob:layer.*.linn': closest names: layers.1.lin, layers.0.lin," in message
    assert "'zzz'" in message and "'head'" not in message
    assert "coglens modules" in message


def test_invalid_regex(model):
    with pytest.raises(ModuleMatchError, match=r"'layers\.\(' is not a valid regular expression"):
        resolve_modules(model, [r"layers.("])


def test_describe_without_inputs_counts_parameters(model):
    infos = {i.name: i for i in describe_modules(model)}
    assert infos[""].class_name == "ToyLM"
    lin = HIDDEN * HIDDEN + HIDDEN
    assert (infos["layers.0"].own_parameters, infos["layers.0"].total_parameters) == (0, lin)
    assert infos["layers.0.lin"].own_parameters == lin
    total = VOCAB * HIDDEN + 2 * lin + 2 * HIDDEN + VOCAB * HIDDEN + HIDDEN + 1
    assert infos[""].total_parameters == total == sum(p.numel() for p in model.parameters())
    assert infos["head"].calls is None and infos["head"].output is None


def test_describe_with_a_dry_run(model):
    infos = {i.name: i for i in describe_modules(model, {"input_ids": torch.tensor([[1, 2, 3]])})}
    assert infos["layers.0"].output == "tuple(Tensor[1, 3, 4] float32, None)"
    assert infos["layers.1"].input == "(Tensor[1, 3, 4] float32, scale=1.0)"
    assert infos[""].output == (
        "ToyOutput(logits=Tensor[1, 3, 10] float32, hidden=Tensor[1, 3, 4] float32, cache=None)"
    )
    assert infos["norm"].calls == 2
    assert infos["unused"].calls == 0 and infos["unused"].output is None
    assert not any(m._forward_hooks for m in model.modules())  # the dry run's hooks are gone


def test_describe_value_summarises_long_containers():
    value = ({"a": torch.zeros(2, dtype=torch.int64)}, [None] * 9)
    assert (
        describe_value(value)
        == "tuple({a: Tensor[2] int64}, list(None, None, None, None, None, None, ... 9 items))"
    )


def test_formatters(model):
    infos = describe_modules(model)
    assert module_log_text(infos).split("\n") == [
        "",
        "embed",
        "layers",
        "layers.0",
        "layers.0.lin",
        "layers.1",
        "layers.1.lin",
        "norm",
        "head",
        "unused",
        "",
    ]
    console = Console(record=True, width=200)
    console.print(module_table(describe_modules(model, (torch.tensor([[1, 2]]),))))
    text = console.export_text()
    assert "(root)" in text and "layers.0.lin" in text and "Tensor[1, 2, 4] float32" in text
