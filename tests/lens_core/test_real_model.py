"""The lens on a real tiny CogVLM2 checkpoint: hooks reproduce the hidden states THUDM's code recorded, and
per-step captures during generate() reproduce its step logits, with left-padded rows."""

from __future__ import annotations

import pytest
import torch
from testkit import load_goldens, load_parity_model

from coglens.lens.capture.modules import ModuleEntry, describe_modules, resolve_modules
from coglens.lens.capture.trace import Trace, token_reducer

TOL = {"atol": 1e-4, "rtol": 1e-4}


@pytest.fixture(scope="module")
def goldens():
    return load_goldens("cogvlm2")


@pytest.fixture(scope="module")
def model():
    return load_parity_model("cogvlm2").eval()


def _inputs(g, case):
    return {
        "input_ids": g[f"{case}/input_ids"],
        "images": [[img] for img in g[f"{case}/images"]],
        "token_type_ids": g[f"{case}/token_type_ids"],
        "attention_mask": g[f"{case}/attention_mask"],
    }


@torch.no_grad()
def test_hooks_reproduce_reference_hidden_states(model, goldens):
    names = sorted(k.removeprefix("hidden/") for k in goldens if k.startswith("hidden/"))
    entries = [ModuleEntry(n.replace(".", r"\.")) for n in names if not n.endswith(".input")]
    entries.append(
        ModuleEntry(r"model\.layers\.0", path="input")
    )  # the default input pick, keyed <name>.input
    with Trace(model, resolve_modules(model, entries)) as trace:
        model(**_inputs(goldens, "single"))
    assert sorted(c.key for c in trace.captures) == names
    for name in names:
        torch.testing.assert_close(trace.get(name), goldens[f"hidden/{name}"], **TOL, msg=name)


@torch.no_grad()
def test_generation_steps_with_left_padding(model, goldens):
    inputs = _inputs(goldens, "batch_left_pad")
    reduce = token_reducer(
        token_type_ids=inputs["token_type_ids"], attention_mask=inputs["attention_mask"], tokens="last"
    )
    with Trace(model, ["lm_head"], reduce=reduce) as trace:
        model.generate(**inputs, max_new_tokens=4, do_sample=False, eos_token_id=3, use_cache=True)
    assert [c.step for c in trace.captures] == [0, 1, 2, 3]
    for capture in trace.captures:
        expected = goldens["greedy_batch/step_logits"][capture.step]  # [B, vocab]
        torch.testing.assert_close(torch.cat(capture.value), expected, **TOL)

    image = token_reducer(
        token_type_ids=inputs["token_type_ids"],
        attention_mask=inputs["attention_mask"],
        tokens="image",
        pooling="mean",
    )
    with Trace(model, [r"model.layers.1"], reduce=image, steps="prefill") as trace:
        model.generate(**inputs, max_new_tokens=2, do_sample=False, eos_token_id=3, use_cache=True)
    [capture] = trace.captures
    with Trace(model, ["model.layers.1"]) as whole:
        model(**inputs)
    layer = whole.get("model.layers.1")
    for row, pooled in enumerate(capture.value):
        vision = (inputs["token_type_ids"][row] == 1) & inputs["attention_mask"][row].bool()
        torch.testing.assert_close(pooled, layer[row, vision].mean(0), **TOL)


@torch.no_grad()
def test_early_stop_and_dry_run(model, goldens):
    calls = []
    handle = model.lm_head.register_forward_hook(lambda *args: calls.append(1))
    try:
        with Trace(model, ["model.vision"], steps="prefill", stop=True) as trace:
            model(**_inputs(goldens, "single"))
    finally:
        handle.remove()
    assert calls == [] and trace.get("model.vision").shape == (1, 6, 64)
    infos = {i.name: i for i in describe_modules(model, _inputs(goldens, "single"))}
    assert infos["model.layers.0"].output == "Tensor[1, 19, 64] float32"
    assert infos["model.vision.conv"].output == "Tensor[1, 32, 2, 2] float32"
