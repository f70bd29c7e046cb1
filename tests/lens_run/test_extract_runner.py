"""`run_lens` end to end on the tiny model: inputs of every kind, batching, skipped images, resume, runs."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
from lens_run_helpers import DEMO_CONFIG, EXAMPLES, assert_same_rows, stored_rows, write_manifest
from rich.console import Console

import coglens.lens
from coglens.lens.capture.modules import ModuleMatchError
from coglens.lens.run.config import load_lens_config
from coglens.lens.run.inputs import LensInputError
from coglens.lens.run.progress import render_summary
from coglens.lens.run.runner import run_lens
from coglens.lens.store.errors import RunSettingsMismatchError
from coglens.processing import load_image, preprocess_image

LAYERS = [r"model\.layers\.\d+", "lm_head", "model.vision"]


def _run(config, tiny_pipeline, **options):
    return run_lens(config, pipeline=tiny_pipeline, show_progress=False, **options)


def _mixed_rows(n_text: int = 2) -> list[dict]:
    """Images with different prompts (so rows differ in length) and text-only rows."""
    images = sorted(EXAMPLES.iterdir())
    rows = [
        {"id": f"img{i}", "image": str(p), "prompt": "Describe " * (i + 1), "label": p.stem.split("_")[0]}
        for i, p in enumerate(images)
    ]
    rows += [{"id": f"text{i}", "prompt": "A question with no image" + "?" * i} for i in range(n_text)]
    return rows


@torch.no_grad()
def test_demo_config_rows_equal_a_direct_forward_of_each_image(tiny_pipeline, tmp_path):
    config = load_lens_config(DEMO_CONFIG, {"output": str(tmp_path / "demo.db")})
    summary = _run(config, tiny_pipeline, default_run_name="demo")
    assert (summary.samples_total, summary.samples_written, summary.rows) == (4, 4, 4 * 4)
    assert summary.modules == ["lm_head", "model.layers.0", "model.layers.1", "model.vision"]
    rows = stored_rows(tmp_path / "demo.db")
    for image in sorted(EXAMPLES.iterdir()):
        inputs = tiny_pipeline.build_inputs(config.prompt, images=[str(image)])
        out = tiny_pipeline.model(
            input_ids=inputs["input_ids"][None],
            token_type_ids=inputs["token_type_ids"][None],
            attention_mask=inputs["attention_mask"][None],
            images=[inputs["images"]],
            output_hidden_states=True,
        )
        key = image.name
        np.testing.assert_allclose(
            rows[key, "lm_head", "output", 0], out.logits[0, -1:], atol=1e-4, rtol=1e-4
        )
        layer0 = out.hidden_states[1][0, -1:]
        np.testing.assert_allclose(rows[key, "model.layers.0", "output", 0], layer0, atol=1e-4, rtol=1e-4)
        pixels = preprocess_image(load_image(image), tiny_pipeline.config.vision_config.image_size)
        vision = tiny_pipeline.model.model.vision(pixels[None])[0].mean(0)  # the config's `pooling: mean`
        np.testing.assert_allclose(rows[key, "model.vision", "output", 0], vision, atol=1e-5, rtol=1e-5)


def test_batch_size_and_padding_do_not_change_rows(tiny_pipeline, tmp_path, make_config):
    manifest = write_manifest(tmp_path / "rows.jsonl", _mixed_rows())
    results = {}
    for size in (1, 3):
        config = make_config(
            manifest=str(manifest),
            modules=LAYERS,
            tokens="all",
            batch_size=size,
            output=str(tmp_path / f"bs{size}.db"),
        )
        assert _run(config, tiny_pipeline).samples_written == 6
        results[size] = stored_rows(tmp_path / f"bs{size}.db")
    # left padding moves a row's rotary positions by one: differences at float32 noise only
    assert_same_rows(results[3], results[1], tol=1e-4)
    assert ("text0", "model.vision", "output", 0) not in results[3]  # text-only rows have no vision rows
    row = _mixed_rows()[2]
    unpadded = tiny_pipeline.build_inputs(row["prompt"], images=[row["image"]])["input_ids"]
    assert results[3]["img2", "model.layers.1", "output", 0].shape[0] == len(unpadded)  # padding removed


def test_unreadable_images_are_reported_skipped_and_counted(tiny_pipeline, tmp_path, make_config):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    shutil.copy(EXAMPLES / "red_circle.png", images / "b.png")
    shutil.copy(EXAMPLES / "two_shapes.jpg", images / "sub/a.JPG")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (images / "empty.jpg").write_bytes(b"")
    (images / "notes.txt").write_text("not an image extension: not an input")
    config = make_config(input_dir=str(images), prompt="What is it?", modules=["lm_head"], batch_size=2)
    summary = _run(config, tiny_pipeline)
    assert sorted(f.key for f in summary.failures) == ["broken.png", "empty.jpg"]
    assert (summary.samples_total, summary.samples_written) == (4, 2)
    console = Console(width=300, record=True, file=io.StringIO())
    console.print(render_summary(summary))
    text = console.export_text()
    assert "2 unreadable" in text and "skipped broken.png" in text and "not an image Pillow can read" in text
    with coglens.lens.open(config.output) as db:
        samples = db.samples()
    assert samples["key"].tolist() == ["b.png", "sub/a.JPG"]  # recursive, sorted by relative path
    assert samples["image_path"].tolist() == [str(images / "b.png"), str(images / "sub/a.JPG")]
    # a rerun retries only the failed images: they are not stored, so not complete
    assert _run(config, tiny_pipeline).samples_resumed == 2


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_manifest_rows_prompts_labels_ids_and_text_only(tiny_pipeline, tmp_path, make_config, kind):
    rows = [
        {"id": "r1", "image": "red_circle.png", "prompt": "Colour?", "label": "red", "split": "train"},
        {"id": "r2", "image": "blue_square.png", "label": "blue", "split": "test"},
        {"id": "r3", "prompt": "No image here.", "label": "none", "split": ""},
    ]
    manifest = tmp_path / f"rows.{kind}"  # relative image paths are relative to the manifest's folder
    for row in rows[:2]:
        shutil.copy(EXAMPLES / row["image"], tmp_path / row["image"])
    if kind == "jsonl":
        write_manifest(manifest, rows)
    else:
        columns = ["id", "image", "prompt", "label", "split"]
        manifest.write_text(
            "\n".join([",".join(columns)] + [",".join(r.get(c, "") for c in columns) for r in rows])
        )
    config = make_config(manifest=str(manifest), prompt="Default prompt.", modules=["lm_head"], tokens="last")
    assert _run(config, tiny_pipeline).samples_written == 3
    with coglens.lens.open(config.output) as db:
        samples = db.samples().set_index("key")
        logits, meta = db.activations("lm_head", label=["red", "none"])
    assert samples["prompt"].to_dict() == {"r1": "Colour?", "r2": "Default prompt.", "r3": "No image here."}
    assert samples["label"].to_dict() == {"r1": "red", "r2": "blue", "r3": "none"}
    assert samples["dataset_row_id"].to_dict() == {"r1": "r1", "r2": "r2", "r3": "r3"}
    assert samples.loc["r1", "image_path"] == str(tmp_path / "red_circle.png")
    assert samples.loc["r3", "num_image_tokens"] == 0
    assert samples.loc["r1", "extra"] == {"split": "train"}
    assert logits.shape == (2, 1, tiny_pipeline.config.vocab_size) and meta["sample_key"].tolist() == ["r1", "r3"]


def test_local_dataset_with_images_and_with_image_paths(tiny_pipeline, tmp_path, make_config):
    datasets = pytest.importorskip("datasets")
    names = ["red_circle.png", "blue_square.png"]
    decoded = datasets.Dataset.from_dict(
        {
            "id": [10, 11],
            "prompt": ["Shape?", "Colour?"],
            "label": ["circle", "square"],
            "image": [str(EXAMPLES / n) for n in names],
        }
    ).cast_column("image", datasets.Image())
    decoded.save_to_disk(tmp_path / "decoded")
    by_path = datasets.DatasetDict({"test": datasets.Dataset.from_dict({"id": ["a", "b"], "image": names})})
    by_path.save_to_disk(tmp_path / "by_path")

    config = make_config(
        dataset=[{"local_dataset_path": str(tmp_path / "decoded")}], modules=["model.vision"]
    )
    assert _run(config, tiny_pipeline).samples_written == 2
    config = make_config(
        dataset=[
            {"local_dataset_path": str(tmp_path / "by_path")},
            {"dataset_split": "test"},
            {"image_dataset_path": str(EXAMPLES)},
        ],
        prompt="Shape?",
        modules=["model.vision"],
        output=str(tmp_path / "by_path.db"),
    )
    assert _run(config, tiny_pipeline).samples_written == 2
    first, second = stored_rows(tmp_path / "lens.db"), stored_rows(tmp_path / "by_path.db")
    # the same images give the same vision rows, whichever way the dataset holds them
    np.testing.assert_array_equal(
        first["10", "model.vision", "output", 0], second["a", "model.vision", "output", 0]
    )
    with coglens.lens.open(tmp_path / "lens.db") as db:
        assert db.samples()[["key", "label", "prompt"]].values.tolist() == [
            ["10", "circle", "Shape?"],
            ["11", "square", "Colour?"],
        ]


def test_hub_dataset_offline_fails_clearly(tiny_pipeline, make_config, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    config = make_config(dataset=[{"dataset_path": "someone/some-dataset"}], prompt="hi", modules=["lm_head"])
    with pytest.raises(LensInputError, match="someone/some-dataset.*local_dataset_path"):
        _run(config, tiny_pipeline)


def test_input_errors_before_the_model_runs(tiny_pipeline, tmp_path, make_config):
    manifest = write_manifest(
        tmp_path / "dup.jsonl", [{"id": "x", "prompt": "a"}, {"id": "x", "prompt": "b"}]
    )
    with pytest.raises(LensInputError, match="'x'.*unique `id`"):
        _run(make_config(manifest=str(manifest), modules=["lm_head"]), tiny_pipeline)
    with pytest.raises(LensInputError, match="does not exist"):
        _run(make_config(input_dir=str(tmp_path / "nowhere"), prompt="hi", modules=["lm_head"]), tiny_pipeline)
    video = write_manifest(tmp_path / "video.jsonl", [{"id": "v", "video": "clip.mp4", "prompt": "hi"}])
    with pytest.raises(LensInputError, match="takes images, not videos"):
        _run(make_config(manifest=str(video), modules=["lm_head"]), tiny_pipeline)
    with pytest.raises(ModuleMatchError, match="closest names: model.layers.0"):
        _run(make_config(prompt="hi", modules=["model.layer.0"]), tiny_pipeline)
    assert not (tmp_path / "lens.db").exists()  # nothing was created or run


def test_resume_skips_complete_samples_and_refuses_changed_settings(tiny_pipeline, tmp_path, make_config):
    rows = _mixed_rows()
    write_manifest(tmp_path / "rows.jsonl", rows[:3])
    settings = {
        "manifest": str(tmp_path / "rows.jsonl"),
        "modules": LAYERS,
        "tokens": "last",
        "batch_size": 2,
    }
    assert _run(make_config(**settings), tiny_pipeline).samples_written == 3
    write_manifest(tmp_path / "rows.jsonl", rows)  # three more inputs: only they are extracted
    summary = _run(make_config(**settings), tiny_pipeline)
    assert (summary.samples_resumed, summary.samples_written) == (3, 3)
    clean = make_config(**settings, output=str(tmp_path / "clean.db"))
    _run(clean, tiny_pipeline)
    # the same rows; batches were composed differently, so padding differs: float32 noise only
    assert_same_rows(stored_rows(tmp_path / "lens.db"), stored_rows(tmp_path / "clean.db"), tol=1e-4)

    with pytest.raises(RunSettingsMismatchError, match="tokens: 'last' -> 'all'.*--overwrite"):
        _run(make_config(**{**settings, "tokens": "all"}), tiny_pipeline)
    summary = _run(make_config(**{**settings, "tokens": "all", "overwrite": True}), tiny_pipeline)
    assert (summary.samples_resumed, summary.samples_written) == (0, 6)
    _run(make_config(**settings, run_name="last-token"), tiny_pipeline)
    with coglens.lens.open(tmp_path / "lens.db") as db:
        runs = db.runs().set_index("name")
        assert runs["num_samples"].to_dict() == {"lens": 6, "last-token": 6}
        assert set(runs["status"]) == {"finished"}
        _, meta = next(db.iter_activations("lm_head", run="lens", stack=False))
        assert meta["selection"].unique().tolist() == ["all"]
    assert_same_rows(
        stored_rows(tmp_path / "lens.db", run="last-token"), stored_rows(tmp_path / "clean.db"), 1e-4
    )


def test_capture_inputs_and_outputs_store_dtype(tiny_pipeline, tmp_path, make_config):
    config = make_config(
        prompt="Text only.", modules=["model.norm"], capture="both", tokens="last", store_dtype="bfloat16"
    )
    _run(config, tiny_pipeline)
    with coglens.lens.open(config.output) as db:
        contents = db.contents()
        output, _ = db.activations("model.norm", as_="torch")
        given, _ = db.activations("model.norm", io="input", as_="torch")
    assert contents[["module", "io"]].values.tolist() == [["model.norm", "input"], ["model.norm", "output"]]
    assert output.dtype == given.dtype == torch.bfloat16
    rms = given.float() * torch.rsqrt(given.float().pow(2).mean(-1, keepdim=True) + 1e-5)
    expected = (tiny_pipeline.model.model.norm.weight * rms).to(torch.bfloat16)
    torch.testing.assert_close(output, expected, atol=3e-2, rtol=2e-2)


def test_generation_steps_end_to_end(tiny_pipeline, tmp_path, make_config):
    config = make_config(
        manifest=str(write_manifest(tmp_path / "rows.jsonl", _mixed_rows(n_text=1))),
        modules=["lm_head", r"model\.layers\.1"],
        tokens="last",
        steps="all",
        batch_size=3,
        forward=[{"max_new_tokens": 4}, {"do_sample": False}],
    )
    _run(config, tiny_pipeline)
    rows = stored_rows(config.output)
    with coglens.lens.open(config.output) as db:
        samples = db.samples().set_index("key")
    for key, sample in samples.iterrows():
        generated = sample["extra"]["generated_ids"]
        steps = sorted(step for k, module, _, step in rows if k == key and module == "lm_head")
        assert steps == list(range(len(generated))) and 1 <= len(generated) <= 4
        for step, token in enumerate(generated):  # greedy: each step's logits chose the next token
            assert int(np.argmax(rows[key, "lm_head", "output", step][-1])) == token
        assert sample["generated_text"] == tiny_pipeline.tokenizer.decode(generated, skip_special_tokens=True)


def test_vlm_lens_format_read_with_vlm_lens_query(tiny_pipeline, tmp_path, make_config):
    import sqlite3

    settings = {
        "input_dir": str(EXAMPLES),
        "prompt": "Colour?",
        "modules": ["lm_head", "model.vision"],
        "pooling": "mean",
    }
    coglens_config = make_config(**settings, output=str(tmp_path / "ours.db"))
    _run(coglens_config, tiny_pipeline)
    vlm_config = make_config(**settings, output=str(tmp_path / "vlm.db"), output_format="vlm-lens")
    summary = _run(vlm_config, tiny_pipeline)
    assert summary.rows == 8
    ours = stored_rows(tmp_path / "ours.db")
    with sqlite3.connect(tmp_path / "vlm.db") as conn:  # how VLM-Lens's notebooks read its database
        found = conn.execute(
            "SELECT name, architecture, image_path, prompt, layer, pooling_method, tensor_dim, tensor "
            "FROM tensors"
        ).fetchall()
    assert len(found) == 8
    for name, architecture, image_path, prompt, layer, pooling, dim, blob in found:
        tensor = torch.load(io.BytesIO(blob), weights_only=True)
        key = image_path.removeprefix(str(EXAMPLES) + "/")
        assert (name, architecture, prompt, pooling) == ("tiny:cogvlm2", "cogvlm2", "Colour?", "mean")
        assert tensor.shape == (1, dim)  # pooled: one vector, with VLM-Lens's leading batch dimension
        assert dim == (tiny_pipeline.config.hidden_size if layer == "model.vision" else tiny_pipeline.config.vocab_size)
        np.testing.assert_array_equal(tensor[0].numpy(), ours[key, layer, "output", 0])


@pytest.mark.postgres
def test_postgres_output_equals_sqlite(tiny_pipeline, tmp_path, make_config, pg_url):
    settings = {
        "input_dir": str(EXAMPLES),
        "prompt": "Colour?",
        "modules": LAYERS,
        "tokens": "image",
        "pooling": "mean",
        "batch_size": 3,
    }
    _run(make_config(**settings), tiny_pipeline)
    summary = _run(make_config(**settings, output=pg_url), tiny_pipeline)
    assert summary.samples_written == 4 and "password" not in summary.output
    assert_same_rows(stored_rows(pg_url), stored_rows(tmp_path / "lens.db"))
    assert _run(make_config(**settings, output=pg_url), tiny_pipeline).samples_resumed == 4
