"""``coglens.lens.intervene``: each intervention checked against a value computed independently (by hand from the
model's own parts, from another input's forward pass, or from the stored run), in plain forwards, in batches with
padding, and during generation through the engine and transformers' ``generate``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from coglens.engine import SamplingParams
from coglens.lens import load_lens_config, run_lens
from coglens.lens.capture.trace import Trace
from coglens.lens.intervene import (
    Ablate,
    Intervene,
    InterventionError,
    Knockout,
    Patch,
    Steer,
    capture,
    load_vector,
    mean_difference,
    stored_activation,
    stored_mean,
)
from coglens.lens.store.reader import open as open_db
from coglens.modeling.routing import VISION_TOKEN_TYPE, build_position_ids
from coglens.pipeline import Pipeline

IMAGES = Path(__file__).resolve().parents[2] / "examples/images"
RED, BLUE = str(IMAGES / "red_circle.png"), str(IMAGES / "blue_square.png")


@pytest.fixture(scope="module")
def pipe(tiny_pipelines) -> Pipeline:
    return tiny_pipelines("cogvlm2", device=None)


def _args(pipe: Pipeline, query: str, image: str | None) -> dict:
    built = pipe.build_inputs(query, images=[image] if image else None)
    return {"input_ids": built["input_ids"][None], "token_type_ids": built["token_type_ids"][None],
            "images": [list(built["images"] or [])]}


@torch.no_grad()
def _logits(model: nn.Module, args: dict, **extra) -> torch.Tensor:
    return model(**args, **extra).logits[0]


def _layer_output(model: nn.Module, args: dict, name: str) -> torch.Tensor:
    with torch.no_grad(), Trace(model, [name]) as trace:
        model(**args)
    value = trace.get(name)
    assert isinstance(value, torch.Tensor)
    return value[0]


def test_patching_every_position_with_b_gives_b_downstream(pipe):
    model = pipe.model
    a, b = _args(pipe, "What is it?", RED), _args(pipe, "What is it?", BLUE)
    expected = _logits(model, b)
    assert (expected - _logits(model, a)).abs().max() > 1e-2  # the images do matter
    for layer in ("model.layers.0", "model.layers.1"):
        value = capture(pipe, "What is it?", layer, images=[BLUE])
        with Intervene(model, [Patch(layer, value)]) as run:
            torch.testing.assert_close(_logits(model, a), expected, rtol=0, atol=1e-5)
        assert run.applied == [a["input_ids"].shape[1]]
    # before the first layer only the image tokens differ: patching them into its input is enough
    value = capture(pipe, "What is it?", "model.layers.0", tokens="image", io="input", images=[BLUE])
    with Intervene(model, [Patch("model.layers.0", value, tokens="image", io="input")]):
        torch.testing.assert_close(_logits(model, a), expected, rtol=0, atol=1e-5)


def test_steering_shifts_the_logits_by_the_hand_computed_amount(pipe):
    model, args = pipe.model, _args(pipe, "What is it?", RED)
    vector = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    clean = _logits(model, args)
    # added after the final norm: the logits move by exactly lm_head(alpha * v), every position
    with Intervene(model, [Steer("model.norm", vector, alpha=3.0)]):
        steered = _logits(model, args)
    torch.testing.assert_close(steered - clean, (3.0 * vector @ model.lm_head.weight.T).expand_as(clean),
                               rtol=1e-4, atol=1e-4)
    # added to the last layer's output at the last token: lm_head(norm(h + alpha v)) there, nothing elsewhere
    hidden = _layer_output(model, args, "model.layers.1")
    with Intervene(model, [Steer("model.layers.1", vector, alpha=2.0, tokens="last")]) as run:
        steered = _logits(model, args)
    with torch.no_grad():
        by_hand = model.lm_head(model.model.norm(hidden[-1] + 2.0 * vector))
    torch.testing.assert_close(steered[-1], by_hand, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(steered[:-1], clean[:-1])
    assert run.records[0]["applied"] == 1 and run.records[0]["kind"] == "steer"


def test_knocking_out_the_image_equals_masking_it(pipe):
    model, args = pipe.model, _args(pipe, "What is it?", RED)
    types = args["token_type_ids"]
    masked = _logits(model, args, attention_mask=(types != VISION_TOKEN_TYPE).long(),
                     position_ids=build_position_ids(types))  # the same positions, image keys hidden
    with Intervene(model, [Knockout(queries="all", keys="image")]):
        knocked = _logits(model, args)
    torch.testing.assert_close(knocked[-1], masked[-1], rtol=0, atol=1e-5)
    assert (knocked[-1] - _logits(model, args)[-1]).abs().max() > 1e-2
    # a knockout in no layer, or of no query, changes nothing
    with Intervene(model, [Knockout(queries="image", keys="text", layers=[0], heads=[0])]):
        torch.testing.assert_close(_logits(model, args)[-1], _logits(model, args)[-1])


def test_edits_during_generation_fire_every_step_the_same_in_the_engine_and_generate(pipe):
    model, args = pipe.model, _args(pipe, "What is it?", RED)
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    vector = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1)) * 4
    clean = pipe.ask("What is it?", images=[RED], params=params).token_ids
    for edit in (Steer("model.layers.1", vector, tokens="last"), Knockout(keys="image")):
        with Intervene(model, [edit]) as engine_run:
            engine = pipe.ask("What is it?", images=[RED], params=params).token_ids
        with Intervene(model, [edit]) as generate_run, torch.no_grad():
            generated = model.generate(**args, max_new_tokens=6, do_sample=False)[0, -6:].tolist()
        assert engine == generated != clean
        assert engine_run.applied == generate_run.applied
    # steps: prefill leaves the decode steps alone; generation leaves the prompt alone
    with Intervene(model, [Steer("model.layers.1", vector, tokens="last", steps="prefill")]) as run:
        pipe.ask("What is it?", images=[RED], params=params)
    assert run.applied == [1]
    with Intervene(model, [Steer("model.layers.1", vector, tokens="last", steps="generation")]) as run:
        pipe.ask("What is it?", images=[RED], params=params)
    assert run.applied == [5]  # every decode step (the first token comes from the prefill)


def test_a_padded_batch_edits_each_row_where_it_would_alone(pipe):
    vector = torch.randn(pipe.model.config.hidden_size, generator=torch.Generator().manual_seed(2)) * 4
    params = SamplingParams(max_new_tokens=5, ignore_eos=True)
    queries = ["What is it?", "Describe the picture in a few words, please."]
    edits = [Steer("model.layers.0", vector, tokens="[3]"), Ablate("model.layers.1", tokens="image")]
    with Intervene(pipe.model, edits):
        alone = [pipe.ask(q, images=[RED], params=params).token_ids for q in queries]
        together = [r.token_ids for r in pipe.engine.generate(
            [pipe.request(q, images=[RED], params=params) for q in queries])]
    assert together == alone


def _store(tmp_path: Path, pipe: Pipeline) -> Path:
    manifest = tmp_path / "samples.jsonl"
    rows = [f'{{"id": "s{i}", "image": "{image}", "label": "{label}"}}'
            for i, (image, label) in enumerate([(RED, "red"), (BLUE, "blue"), (RED, "red"), (BLUE, "blue")])]
    manifest.write_text("\n".join(rows) + "\n")
    config = load_lens_config(None, {"model_path": "tiny:cogvlm2", "manifest": str(manifest), "prompt": "What is it?",
                                     "output": str(tmp_path / "runs.db"), "tokens": "image", "pooling": "none",
                                     "modules": ["model.layers.0"]})
    run_lens(config, pipeline=pipe, show_progress=False, default_run_name="clean")
    return tmp_path / "runs.db"


def test_mean_ablation_puts_in_the_stored_mean_and_resample_another_sample(pipe, tmp_path):
    db = _store(tmp_path, pipe)
    stored, _ = open_db(db).activations("model.layers.0", run="clean")
    mean = stored_mean(db, "model.layers.0", run="clean")
    torch.testing.assert_close(mean, torch.as_tensor(stored).reshape(-1, stored.shape[-1]).mean(0), rtol=1e-5,
                               atol=1e-6)
    args = _args(pipe, "What is it?", RED)
    image = args["token_type_ids"][0] == VISION_TOKEN_TYPE
    with Intervene(pipe.model, [Ablate("model.layers.0", tokens="image", mode="mean", value=mean)]):
        ablated = _layer_output(pipe.model, args, "model.layers.0")
    torch.testing.assert_close(ablated[image], mean.expand(int(image.sum()), -1))
    torch.testing.assert_close(ablated[~image], _layer_output(pipe.model, args, "model.layers.0")[~image])

    other = stored_activation(db, "model.layers.0", "s1", run="clean")  # the blue image's stored tokens
    with Intervene(pipe.model, [Ablate("model.layers.0", tokens="image", mode="resample", value=other)]):
        torch.testing.assert_close(_layer_output(pipe.model, args, "model.layers.0")[image], other)

    direction = mean_difference(db, "model.layers.0", "label", "red", "blue", run="clean")
    torch.testing.assert_close(direction, stored_mean(db, "model.layers.0", run="clean", label="red")
                               - stored_mean(db, "model.layers.0", run="clean", label="blue"))
    with Intervene(pipe.model, [Ablate("model.layers.0", tokens="image")]):
        assert _layer_output(pipe.model, args, "model.layers.0")[image].abs().max() == 0


def test_vector_files_load_without_unpickling(tmp_path):
    from safetensors.torch import save_file

    vector = torch.arange(4.0)
    save_file({"v": vector}, tmp_path / "v.safetensors")
    torch.save({"v": vector}, tmp_path / "v.pt")
    import numpy as np

    np.save(tmp_path / "v.npy", vector.numpy())
    for name in ("v.safetensors", "v.pt", "v.npy"):
        torch.testing.assert_close(load_vector(tmp_path / name), vector)
    torch.save({"v": vector, "w": vector}, tmp_path / "two.pt")
    with pytest.raises(InterventionError, match="holds 2 entries; name one with key"):
        load_vector(tmp_path / "two.pt")


def test_mistakes_are_named_and_leave_no_hooks(pipe):
    model, args = pipe.model, _args(pipe, "What is it?", RED)
    with pytest.raises(InterventionError, match="model.layer.0"):
        Intervene(model, [Ablate("model.layer.0")])
    with pytest.raises(InterventionError, match="mean ablation needs the value"):
        Ablate("model.layers.0", mode="mean")
    with pytest.raises(InterventionError, match="layers \\[7\\] do not exist"):
        Intervene(model, [Knockout(layers=[7])])
    with (pytest.raises(InterventionError, match="the value has shape \\(3,\\)"),
          Intervene(model, [Steer("model.layers.0", torch.ones(3))])):
        _logits(model, args)
    with (pytest.raises(InterventionError, match="cannot apply; use all"),
          Intervene(model, [Ablate("model.vision.transformer.layers.0", tokens="image")])):
        _logits(model, args)
    hooks = [m for m in model.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert hooks == []


def test_knockout_follows_the_engines_batch_as_rows_leave_and_join(pipe):
    """Rows of different lengths finish at different steps, and a small batch admits waiting rows mid-generation:
    the prompt's image positions must still be known at every decode step of every row."""
    from coglens.engine import Engine

    queries = [("What is it?", 3), ("Describe the picture.", 6), ("Colour?", 5), ("Which shape is shown?", 4)]

    def requests(tag: str):
        return [pipe.request(q, images=[RED], params=SamplingParams(max_new_tokens=n, ignore_eos=True),
                             request_id=f"{tag}{i}") for i, (q, n) in enumerate(queries)]

    knockout = Knockout(keys="image")
    with Intervene(pipe.model, [knockout]):
        alone = [pipe.engine.generate([r])[0].token_ids for r in requests("alone")]
        together = [r.token_ids for r in Engine(pipe.model, pipe.tokenizer, max_batch_size=2).generate(
            requests("small"))]
    assert together == alone
    assert alone != [pipe.engine.generate([r])[0].token_ids for r in requests("clean")]


def test_a_step_that_fails_leaves_the_engine_usable(pipe):
    with Intervene(pipe.model, [Steer("model.layers.0", torch.ones(3))]), pytest.raises(InterventionError):
        pipe.ask("What is it?", images=[RED])
    assert not pipe.engine.has_work()
    assert len(pipe.ask("What is it?", images=[RED], params=SamplingParams(max_new_tokens=3)).token_ids) == 3


def test_per_token_values_go_where_the_selection_lists_them(pipe):
    model = pipe.model
    red, blue = _args(pipe, "What is it?", RED), _args(pipe, "What is it?", BLUE)
    value = capture(pipe, "What is it?", "model.layers.0", tokens="[12, 9]", images=[BLUE])
    source = _layer_output(model, blue, "model.layers.0")
    torch.testing.assert_close(value, source[[12, 9]])
    with Intervene(model, [Patch("model.layers.0", value, tokens="[12, 9]")]):
        patched = _layer_output(model, red, "model.layers.0")
    torch.testing.assert_close(patched[[9, 12]], source[[9, 12]])


def test_lm_head_edits_the_positions_it_computes(pipe):
    """The engine keeps only the last position's logits at the prefill: [0] is not computed there, last is."""
    favourite = torch.zeros(pipe.config.vocab_size)
    favourite[7] = 1e4
    params = SamplingParams(max_new_tokens=2)
    clean = pipe.ask("What is it?", images=[RED], params=params).token_ids
    with Intervene(pipe.model, [Steer("lm_head", favourite, tokens="last", steps="prefill")]) as run:
        assert pipe.ask("What is it?", images=[RED], params=params).token_ids[0] == 7
    assert run.applied == [1]
    with Intervene(pipe.model, [Steer("lm_head", favourite, tokens="[0]", steps="prefill")]) as run:
        assert pipe.ask("What is it?", images=[RED], params=params).token_ids == clean
    assert run.applied == [0]


def test_a_query_with_every_key_knocked_out_never_reads_the_future(pipe):
    model = pipe.model
    a, b = _args(pipe, "What is it?", RED), _args(pipe, "What is it?", RED)
    b["input_ids"] = b["input_ids"].clone()
    b["input_ids"][0, -2] = 100  # a later token differs
    with Intervene(model, [Knockout(queries="[3]", keys="slice:0:4", layers=[0])]):
        first, second = _layer_output(model, a, "model.layers.0"), _layer_output(model, b, "model.layers.0")
    torch.testing.assert_close(first[3], second[3])


def test_misuse_is_named(pipe):
    model, args = pipe.model, _args(pipe, "What is it?", RED)
    with (pytest.raises(InterventionError, match="outside a forward pass"),
          Intervene(model, [Ablate("model.layers.0")]), torch.no_grad()):
        model.model(input_ids=args["input_ids"], token_type_ids=torch.zeros_like(args["token_type_ids"]))
    with (pytest.raises(InterventionError, match="keyword arguments only"),
          Intervene(model, [Ablate("model", io="input")]), torch.no_grad()):
        model(**args)
