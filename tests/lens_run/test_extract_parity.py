"""The runner's batch function on the parity fixtures: what it captures, selects, pools and stores equals what
THUDM's code recorded (hidden states, logits, step logits), in mixed and left-padded batches."""

from __future__ import annotations

import pytest
import torch
from testkit import load_goldens, load_parity_model

import coglens.lens
from coglens.lens.capture.batch import BatchCapturer
from coglens.lens.capture.modules import ModuleEntry, resolve_modules
from coglens.lens.capture.select import TokenSpec
from coglens.lens.run.inputs import LensSample
from coglens.lens.store.coglens_db import LensStore

TOL = {"atol": 1e-4, "rtol": 1e-4}


@pytest.fixture(scope="module")
def goldens():
    return load_goldens("cogvlm2")


@pytest.fixture(scope="module")
def model():
    return load_parity_model("cogvlm2")


def _case(g, case: str) -> dict:
    return {
        "input_ids": g[f"{case}/input_ids"],
        "token_type_ids": g[f"{case}/token_type_ids"],
        "attention_mask": g[f"{case}/attention_mask"],
        "images": [[image] for image in g[f"{case}/images"]],
    }


def _samples(*keys: str) -> list[LensSample]:
    return [LensSample(key, f"prompt {key}") for key in keys]


def _capturer(model, entries, **options) -> BatchCapturer:
    return BatchCapturer(model, resolve_modules(model, entries), **options)


def _by_module(result) -> dict[tuple[str, str, str, int], torch.Tensor]:
    return {(a.sample_key, a.module, a.io, a.step): a.tensor for a in result.activations}


def test_every_recorded_module_through_capture_store_and_reader(model, goldens, tmp_path):
    names = sorted(k.removeprefix("hidden/") for k in goldens if k.startswith("hidden/"))
    entries = [ModuleEntry(name.replace(".", r"\.")) for name in names if not name.endswith(".input")]
    entries.append(ModuleEntry(r"model\.layers\.0", path="input.hidden_states"))  # by argument name
    result = _capturer(model, entries)(_samples("single"), _case(goldens, "single"))
    captured = _by_module(result)
    expected_keys = {n for n in names if not n.endswith(".input")} | {"model.layers.0:input.hidden_states"}
    assert {module for _, module, _, _ in captured} == expected_keys
    for (_, module, io, _), tensor in captured.items():
        golden = goldens[f"hidden/{'model.layers.0.input' if io == 'input' else module}"]
        # a [B, L, D] output is stored per row as [L, D]; a conv map [B, C, H, W] as ONE position [1, C, H, W]
        expected = golden if golden.ndim == 4 else golden[0]
        torch.testing.assert_close(tensor, expected, **TOL, msg=module)

    with LensStore(tmp_path / "lens.db") as store:
        run_id = store.start_run("parity", model_path="cogvlm2-tiny")
        store.write_batch(run_id, result.samples, result.activations)
        store.mark_finished(run_id)
    with coglens.lens.open(tmp_path / "lens.db") as db:
        for name in ("model.layers.1.mlp", "model.vision", "model.vision.conv", "lm_head"):
            stored, _ = db.activations(name)
            golden = goldens[f"hidden/{name}"]
            torch.testing.assert_close(
                torch.from_numpy(stored).reshape(golden.shape), golden, **TOL, msg=name
            )
        [sample] = db.samples().to_dict("records")
    real = goldens["single/attention_mask"][0].bool()
    assert sample["input_ids"].tolist() == goldens["single/input_ids"][0][real].tolist()
    assert sample["token_type_ids"].tolist() == goldens["single/token_type_ids"][0][real].tolist()
    assert sample["num_image_tokens"] == int((goldens["single/token_type_ids"] == 1).sum())


def _left_pad(rows: list[dict]) -> dict:
    """Left-pad unbatched cases by hand (pad id 0, type 0, mask 0), as the fixtures' batch was made."""
    length = max(row["input_ids"].shape[1] for row in rows)
    batch = {"images": [image for row in rows for image in row["images"]]}
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        batch[key] = torch.stack(
            [torch.nn.functional.pad(row[key][0], (length - row[key].shape[1], 0)) for row in rows]
        )
    return batch


def test_mixed_batch_image_row_and_left_padded_text_row(model, goldens):
    text_only = {
        "input_ids": goldens["text_only/input_ids"],
        "token_type_ids": goldens["text_only/token_type_ids"],
        "attention_mask": goldens["text_only/attention_mask"],
        "images": [[]],
    }
    batch = _left_pad([_case(goldens, "single"), text_only])
    entries = ["lm_head", "model.vision", ModuleEntry("model.vision.transformer", tokens=TokenSpec("last"))]
    captured = _by_module(_capturer(model, entries)(_samples("image", "text"), batch))
    torch.testing.assert_close(captured["image", "lm_head", "output", 0], goldens["single/logits"][0], **TOL)
    torch.testing.assert_close(
        captured["text", "lm_head", "output", 0], goldens["text_only/logits"][0], **TOL
    )
    # the vision tower ran on one image: it belongs to row 0; the text-only row has no vision activation
    vision = goldens["hidden/model.vision"][0]
    torch.testing.assert_close(captured["image", "model.vision", "output", 0], vision, **TOL)
    last = goldens["hidden/model.vision.transformer"][0, -1:]
    torch.testing.assert_close(captured["image", "model.vision.transformer", "output", 0], last, **TOL)
    assert not [key for key in captured if key[0] == "text" and key[1].startswith("model.vision")]


def test_token_selection_and_pooling_per_module(model, goldens):
    entries = [
        ModuleEntry("model.norm", tokens=TokenSpec("image"), pooling="mean"),
        ModuleEntry(r"model\.layers\.1\.mlp", tokens=TokenSpec("text"), pooling="max"),
        ModuleEntry("model", path="output.last_hidden_state"),  # a ModelOutput field, default tokens: last
        ModuleEntry("model", path="output[0]", tokens=TokenSpec("image"), pooling="mean"),  # same module
        ModuleEntry("lm_head", tokens=TokenSpec.parse("[0, -1]")),
    ]
    capturer = _capturer(model, entries, tokens=TokenSpec("last"), store_dtype="bfloat16")
    result = capturer(_samples("single"), _case(goldens, "single"))
    captured = _by_module(result)
    norm = goldens["hidden/model.norm"][0]
    image = goldens["single/token_type_ids"][0] == 1
    text = ~image
    text[0] = False  # `text` leaves out bos
    expected = {
        "model.norm": norm[image].mean(0),
        "model.layers.1.mlp": goldens["hidden/model.layers.1.mlp"][0][text].amax(0),
        "model:output.last_hidden_state": norm[-1:],
        "model:output[0]": norm[image].mean(0),
        "lm_head": goldens["hidden/lm_head"][0][[0, -1]],
    }
    for module, value in expected.items():
        tensor = captured["single", module, "output", 0]
        assert tensor.dtype == torch.bfloat16
        torch.testing.assert_close(tensor.float(), value.to(torch.bfloat16).float(), atol=2e-2, rtol=1e-2)
    selections = {a.module: (a.selection, a.pooling) for a in result.activations}
    assert selections == {
        "model.norm": ("image", "mean"),
        "model.layers.1.mlp": ("text", "max"),
        "model:output.last_hidden_state": ("last", None),
        "model:output[0]": ("image", "mean"),
        "lm_head": ("[0, -1]", None),
    }


def test_generation_stores_every_step(model, goldens):
    capturer = _capturer(
        model,
        ["lm_head", "model.vision"],
        tokens=TokenSpec("last"),
        steps="all",
        forward={"max_new_tokens": 10, "do_sample": False, "eos_token_id": 3},
    )
    result = capturer(_samples("a", "b"), _case(goldens, "batch_left_pad"))
    captured = _by_module(result)
    for row, key in enumerate(("a", "b")):
        steps = sorted(step for k, module, _, step in captured if k == key and module == "lm_head")
        assert steps == list(range(10))
        for step in steps:
            expected = goldens["greedy_batch/step_logits"][step, row]
            torch.testing.assert_close(captured[key, "lm_head", "output", step][0], expected, **TOL)
        assert [k[3] for k in captured if k[0] == key and k[1] == "model.vision"] == [0]
    generated = [sample.extra["generated_ids"] for sample in result.samples]
    assert generated == goldens["greedy_batch/new_tokens"].tolist()


def test_rows_after_end_of_sequence_are_dropped(model, goldens):
    # eos = the token row "b" generates at step 2: row b stops there, row a runs on (its own eos never comes)
    eos = int(goldens["greedy_batch/new_tokens"][1, 2])
    assert eos not in goldens["greedy_batch/new_tokens"][0].tolist()
    capturer = _capturer(
        model,
        ["lm_head"],
        tokens=TokenSpec("last"),
        steps="all",
        forward={"max_new_tokens": 5, "do_sample": False, "eos_token_id": eos},
    )
    result = capturer(_samples("a", "b"), _case(goldens, "batch_left_pad"))
    steps = {key: sorted(a.step for a in result.activations if a.sample_key == key) for key in ("a", "b")}
    assert steps == {"a": [0, 1, 2, 3, 4], "b": [0, 1, 2]}
    assert result.samples[1].extra["generated_ids"] == goldens["greedy_batch/new_tokens"][1, :3].tolist()
