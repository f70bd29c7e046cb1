"""nnsight on a CogLens model: a decoder layer read and written through ``nnsight.TransformersModel``, in one
forward and at every generation step, checked against CogLens's own ``Trace`` captures and ``Intervene`` edits (two
tools hooking the same model must see, and cause, the same thing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from coglens.engine import SamplingParams
from coglens.lens.capture.trace import Trace
from coglens.lens.intervene import Ablate, Intervene, Patch, Steer, capture
from coglens.modeling.routing import VISION_TOKEN_TYPE
from coglens.pipeline import Pipeline
from coglens.processing.processor import CogvlmProcessor

nnsight = pytest.importorskip("nnsight")

# Importing nnsight mounts `.save()` on every Python object (its PYMOUNT option). The whole suite shares this
# process, so take it back off; these tests use the function form, nnsight.save(value).
if "save" in vars(object):
    nnsight._c.unmount("save")

IMAGES = Path(__file__).resolve().parents[2] / "examples/images"
RED, BLUE = str(IMAGES / "red_circle.png"), str(IMAGES / "blue_square.png")
QUERY = "What is it?"
STEPS = 5


@pytest.fixture(scope="module")
def wrapped() -> tuple[Pipeline, Any]:
    """A Pipeline of its own: nnsight instruments every module's forward and left-pads the tokenizer it is given."""
    pipe = Pipeline.load("tiny:cogvlm2", device="cpu")
    return pipe, nnsight.TransformersModel(pipe.model, tokenizer=pipe.tokenizer, task="text-generation")


def _args(pipe: Pipeline, image: str) -> dict[str, Any]:
    built = pipe.build_inputs(QUERY, images=[image])
    return {"input_ids": built["input_ids"][None], "token_type_ids": built["token_type_ids"][None],
            "images": [list(built["images"] or [])]}


def test_a_trace_reads_what_a_coglens_trace_captures(wrapped):
    pipe, model = wrapped
    args = _args(pipe, RED)
    with model.trace(**args):
        hidden = nnsight.save(model.model.layers[0].output)
        logits = nnsight.save(model.output.logits)
    with torch.no_grad(), Trace(pipe.model, ["model.layers.0"]) as trace:
        expected = pipe.model(**args).logits
    assert hidden.shape == (1, args["input_ids"].shape[1], pipe.model.config.hidden_size)
    torch.testing.assert_close(hidden, trace.get("model.layers.0"))
    torch.testing.assert_close(logits, expected)


@pytest.mark.parametrize("edit", ["zero the last token", "patch the image tokens"])
def test_a_trace_write_changes_the_logits_as_intervene_does(wrapped, edit):
    pipe, model = wrapped
    args = _args(pipe, RED)
    image = args["token_type_ids"][0] == VISION_TOKEN_TYPE
    with torch.no_grad():
        clean = pipe.model(**args).logits
    if edit == "zero the last token":
        with model.trace(**args):
            model.model.layers[0].output[0, -1] = 0
            logits = nnsight.save(model.output.logits)
        intervention = Ablate("model.layers.0", tokens="last")
    else:
        with model.trace(**_args(pipe, BLUE)):
            blue = nnsight.save(model.model.layers[0].output)
        with model.trace(**args):
            model.model.layers[0].output[0, image] = blue[0, image]
            logits = nnsight.save(model.output.logits)
        value = capture(pipe, QUERY, "model.layers.0", tokens="image", images=[BLUE])
        intervention = Patch("model.layers.0", value, tokens="image")
    with torch.no_grad(), Intervene(pipe.model, [intervention]):
        expected = pipe.model(**args).logits
    assert (expected - clean).abs().max() > 1e-2  # the edit matters
    torch.testing.assert_close(logits, expected)
    with torch.no_grad():  # the edit lived in the trace only
        torch.testing.assert_close(pipe.model(**args).logits, clean, rtol=0, atol=0)


def test_generation_reads_every_step_as_trace_captures_it_and_steers_as_intervene(wrapped):
    pipe, model = wrapped
    args = _args(pipe, RED)
    # min_new_tokens holds generate to the loop's bound, as ignore_eos holds the engine
    generate = {"max_new_tokens": STEPS, "min_new_tokens": STEPS, "do_sample": False}
    params = SamplingParams(max_new_tokens=STEPS, ignore_eos=True)
    with model.generate(**args, **generate) as tracer:
        outputs = nnsight.save([])
        for _ in tracer.iter[:STEPS]:
            outputs.append(model.model.layers[1].output)
        ids = nnsight.save(tracer.result)
    with torch.no_grad(), Trace(pipe.model, ["model.layers.1"]) as trace:
        clean = pipe.ask(QUERY, images=[RED], params=params).token_ids
    assert ids[0, -STEPS:].tolist() == clean
    assert {c.step for c in trace.captures} == set(range(STEPS)) and len(outputs) == STEPS
    assert [o.shape[1] for o in outputs] == [args["input_ids"].shape[1]] + [1] * (STEPS - 1)  # prefill, then 1 each
    for step, output in enumerate(outputs):
        torch.testing.assert_close(output, trace.get("model.layers.1", step=step))

    vector = torch.randn(pipe.model.config.hidden_size, generator=torch.Generator().manual_seed(1)) * 4
    with model.generate(**args, **generate) as tracer:
        for _ in tracer.iter[:STEPS]:
            model.model.layers[1].output[0, -1] += vector
        steered = nnsight.save(tracer.result)
    with Intervene(pipe.model, [Steer("model.layers.1", vector, tokens="last")]) as run:
        expected = pipe.ask(QUERY, images=[RED], params=params).token_ids
    assert run.applied == [STEPS]  # the prefill's last token, then every decode step
    assert steered[0, -STEPS:].tolist() == expected != clean


def test_a_prompt_and_image_go_through_the_cogvlm_processor():
    # a processor takes `images=` for itself (model inputs would then go by `pixel_values=`): a wrapper of its own
    pipe = Pipeline.load("tiny:cogvlm2", device="cpu")
    processor = CogvlmProcessor.from_config(pipe.tokenizer, pipe.model.config)
    model = nnsight.TransformersModel(pipe.model, tokenizer=pipe.tokenizer, processor=processor,
                                      task="text-generation")
    image = Image.open(RED).convert("RGB")
    with model.trace(QUERY, images=image):
        hidden = nnsight.save(model.model.layers[0].output)
    with torch.no_grad(), Trace(pipe.model, ["model.layers.0"]) as trace:
        pipe.model(**_args(pipe, RED))
    torch.testing.assert_close(hidden, trace.get("model.layers.0"))
    with model.generate(QUERY, images=image, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False) as tracer:
        ids = nnsight.save(tracer.result)
    expected = pipe.ask(QUERY, images=[RED], params=SamplingParams(max_new_tokens=STEPS, ignore_eos=True))
    assert ids[0, -STEPS:].tolist() == expected.token_ids
