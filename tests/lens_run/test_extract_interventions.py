"""``interventions:`` in lens configs: a clean run and an intervened run of the same inputs, read back per sample,
equal to the same edits applied by hand in Python; what was done is recorded; mistakes name the entry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from testkit import run_cli

from coglens.engine import SamplingParams
from coglens.lens import LensConfigError, load_lens_config, run_lens
from coglens.lens.capture.trace import Trace
from coglens.lens.intervene import Ablate, Intervene, InterventionError, Steer, effects, stored_mean
from coglens.lens.store.reader import open as open_db

IMAGES = Path(__file__).resolve().parents[2] / "examples/images"
SAMPLES = [("s0", "red_circle.png", "red"), ("s1", "blue_square.png", "blue"), ("s2", "green_triangle.png", "green")]
PROMPT = "What is it?"


def _config(tmp_path: Path, interventions: list, **extra) -> dict:
    manifest = tmp_path / "samples.jsonl"
    manifest.write_text("".join(json.dumps({"id": key, "image": str(IMAGES / name), "label": label}) + "\n"
                                for key, name, label in SAMPLES))
    return {"model_path": "tiny:cogvlm2", "manifest": str(manifest), "prompt": PROMPT,
            "output": str(tmp_path / "runs.db"), "modules": [{"name": "model.layers.0", "tokens": "image"},
                                                              {"name": "model.layers.1", "tokens": "last"}],
            "forward": [{"max_new_tokens": 4}], "steps": "all", "interventions": interventions, **extra}


def test_an_intervention_run_stores_clean_and_intervened_samples_equal_to_python(tiny_pipeline, tmp_path):
    vector = torch.randn(tiny_pipeline.config.hidden_size, generator=torch.Generator().manual_seed(0)) * 3
    save_file({"v": vector}, tmp_path / "v.safetensors")
    interventions = [{"ablate": "model.layers.0", "tokens": "image", "mode": "mean"},
                     {"steer": "model.layers.1", "tokens": "last", "alpha": 2,
                      "vector": str(tmp_path / "v.safetensors")}]
    config = load_lens_config(None, _config(tmp_path, interventions))
    run_lens(config, pipeline=tiny_pipeline, show_progress=False, default_run_name="effect")

    db = open_db(tmp_path / "runs.db")
    runs = db.runs().set_index("name")
    assert set(runs.index) == {"effect", "effect.clean"}
    recorded = json.loads(runs.loc["effect", "config"])
    assert recorded["clean_run"] == "effect.clean" and [e["kind"] for e in recorded["interventions"]] == [
        "ablate", "steer"]
    assert json.loads(runs.loc["effect.clean", "config"])["interventions"] is None

    clean, intervened, meta = effects(db, "model.layers.1")
    assert list(meta["sample_key"]) == ["s0", "s1", "s2"]
    mean = stored_mean(db, "model.layers.0", run="effect.clean")
    edits = [Ablate("model.layers.0", tokens="image", mode="mean", value=mean),
             Steer("model.layers.1", vector, alpha=2.0, tokens="last")]
    for row, (_, name, _) in enumerate(SAMPLES):
        built = tiny_pipeline.build_inputs(PROMPT, images=[str(IMAGES / name)])
        args = {"input_ids": built["input_ids"][None], "token_type_ids": built["token_type_ids"][None],
                "images": [built["images"]]}
        for edit_list, stored in (([], clean), (edits, intervened)):
            with torch.no_grad(), Intervene(tiny_pipeline.model, edit_list), Trace(tiny_pipeline.model,
                                                                                   ["model.layers.1"]) as trace:
                tiny_pipeline.model(**args)
            np.testing.assert_allclose(stored[row].reshape(-1), trace.get("model.layers.1")[0, -1].numpy(),
                                       rtol=1e-4, atol=1e-4)
        with Intervene(tiny_pipeline.model, edits):
            answer = tiny_pipeline.ask(PROMPT, images=[str(IMAGES / name)],
                                       params=SamplingParams(max_new_tokens=4)).text
        samples = db.samples("effect").set_index("key")
        assert samples.loc[f"s{row}", "generated_text"] == answer  # the answers of the intervened model
    assert not np.allclose(clean, intervened)


def test_resuming_with_other_interventions_is_refused(tiny_pipeline, tmp_path):
    first = _config(tmp_path, [{"ablate": "model.layers.0", "tokens": "image"}], run_name="effect")
    run_lens(load_lens_config(None, first), pipeline=tiny_pipeline, show_progress=False)
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump({**first, "interventions": [
        {"ablate": "model.layers.1", "tokens": "image"}]}))
    result = run_cli("extract", "--config", str(tmp_path / "changed.yaml"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "other settings (interventions: [{" in result.stderr
    assert "'module': 'model.layers.0'" in result.stderr and "'module': 'model.layers.1'" in result.stderr


@pytest.mark.parametrize(("entry", "words"), [
    ({"ablate": "model.layers.0", "mode": "average"}, "interventions[0].mode: 'average'"),
    ({"steer": "model.layers.0"}, "exactly one of vector"),
    ({"steer": "model.layers.0", "vector": "nope.safetensors"}, "interventions[0].vector"),
    ({"patch": "model.layers.0"}, "exactly one of source"),
    ({"knockout": {"layers": ["a"]}}, "interventions[0].layers"),
    ({"ablate": "model.layers.0", "strength": 2}, "unknown: ['strength']"),
    ({"smash": "model.layers.0"}, "exactly one of ablate, steer, patch, knockout"),
    ({"ablate": "model.layers.0", "tokens": "pixels"}, "interventions[0].tokens"),
])
def test_malformed_interventions_name_the_entry(tmp_path, entry, words):
    with pytest.raises(LensConfigError) as error:
        load_lens_config(None, _config(tmp_path, [entry]))
    assert words in str(error.value)


def test_a_module_that_does_not_exist_fails_before_anything_is_stored(tiny_pipeline, tmp_path):
    config = load_lens_config(None, _config(tmp_path, [{"ablate": "model.layer.0"}], run_name="typo"))
    with pytest.raises(InterventionError, match="model.layer.0"):
        run_lens(config, pipeline=tiny_pipeline, show_progress=False)
    assert not (tmp_path / "runs.db").exists()


@pytest.mark.parametrize(("changes", "words"), [
    ({"output_format": "vlm-lens"}, "output_format: 'vlm-lens'"),
    ({"run_name": "x", "clean_run": "x"}, "clean_run: 'x'"),
    ({"interventions": [{"ablate": "model.layers.1", "tokens": "image", "mode": "mean"}]},
     "this config stores it at tokens last; add a modules entry {name: model.layers.1, tokens: image}"),
    ({"interventions": [{"ablate": "model.norm", "mode": "mean"}]}, "does not capture it (output)"),
])
def test_interventions_that_the_clean_run_cannot_support_are_refused(tmp_path, changes, words):
    with pytest.raises(LensConfigError) as error:
        load_lens_config(None, {**_config(tmp_path, [{"ablate": "model.layers.0", "tokens": "image"}]), **changes})
    assert words in str(error.value)


def test_vlm_lens_pooling_method_none_means_no_pooling(tmp_path):
    config = load_lens_config(None, {**_config(tmp_path, []), "pooling_method": "None"})
    assert config.pooling == "none"


def test_effects_of_activations_whose_shapes_differ(tiny_pipeline, tmp_path):
    """Whole prompts of different lengths: read as lists, sample by sample."""
    config = _config(tmp_path, [{"ablate": "model.layers.0", "tokens": "image"}])
    config["modules"] = [{"name": "model.layers.1", "tokens": "all"}]
    manifest = tmp_path / "samples.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"q{i}", "image": str(IMAGES / "red_circle.png"),
                                            "prompt": "Hi " * (i + 1)}) + "\n" for i in range(2)))
    run_lens(load_lens_config(None, config), pipeline=tiny_pipeline, show_progress=False, default_run_name="r")
    clean, intervened, meta = effects(tmp_path / "runs.db", "model.layers.1", stack=False)
    assert list(meta["sample_key"]) == ["q0", "q1"] and clean[0].shape != clean[1].shape
    assert [c.shape for c in clean] == [i.shape for i in intervened]
