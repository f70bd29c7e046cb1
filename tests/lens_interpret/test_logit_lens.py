"""The logit lens against the model's own parts: the last row is the model's logits, every other row is the layer's
output through the final norm and lm_head (computed here by hand from a Trace), targets as documented."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from testkit import run_cli

from coglens.lens.capture.trace import Trace
from coglens.lens.interpret.logit_lens import LogitLensError, logit_lens, render

RED = str(Path(__file__).resolve().parents[2] / "examples/images/red_circle.png")


def _inputs(pipe, query: str, extra: list[int] = ()) -> dict:
    built = pipe.build_inputs(query, images=[RED])
    ids = torch.cat((built["input_ids"], torch.tensor(list(extra), dtype=torch.long)))
    types = torch.cat((built["token_type_ids"], torch.zeros(len(extra), dtype=torch.long)))
    return {"input_ids": ids[None], "token_type_ids": types[None], "images": [built["images"]]}


def test_every_layer_is_its_residual_through_norm_and_lm_head_and_the_last_is_the_model(tiny_pipeline):
    model = tiny_pipeline.model
    lens = logit_lens(tiny_pipeline, "What is it?", images=[RED], positions="slice:-4:", top_k=3)
    args = _inputs(tiny_pipeline, "What is it?")
    names = [f"model.layers.{i}" for i in range(model.config.num_hidden_layers)]
    with torch.no_grad(), Trace(model, names) as trace:
        logits = model(**args).logits[0]
    at = torch.tensor(lens.positions)
    assert lens.layers == ["embeddings", *(str(i) for i in range(len(names)))]
    torch.testing.assert_close(lens.target_probs[-1], logits[at].softmax(-1)[torch.arange(4), lens.target_ids])
    for i, name in enumerate(names):
        with torch.no_grad():
            by_hand = model.lm_head(model.model.norm(trace.get(name)[0, at])).softmax(-1)
        top = by_hand.topk(3, dim=-1)
        torch.testing.assert_close(lens.top_probs[i + 1], top.values, rtol=1e-5, atol=1e-6)
        assert lens.top_ids[i + 1].tolist() == top.indices.tolist()
    # the targets: the next input token, and at the last position the model's own choice
    ids = args["input_ids"][0].tolist()
    assert lens.target_ids[:-1] == [ids[p + 1] for p in lens.positions[:-1]]
    assert lens.target_ids[-1] == int(logits[-1].argmax())


def test_an_answer_is_teacher_forced_and_scored_token_by_token(tiny_pipeline):
    lens = logit_lens(tiny_pipeline, "What is it?", images=[RED], answer="a red circle")
    answer_ids = tiny_pipeline.tokenizer.encode(" a red circle", add_special_tokens=False)
    assert lens.target_ids == answer_ids and len(lens.positions) == len(answer_ids)
    with torch.no_grad():
        logits = tiny_pipeline.model(**_inputs(tiny_pipeline, "What is it?", answer_ids)).logits[0]
    expected = logits[torch.tensor(lens.positions)].softmax(-1)[torch.arange(len(answer_ids)), answer_ids]
    torch.testing.assert_close(lens.target_probs[-1], expected)
    picture = render(lens)
    assert picture.size[0] > 120 + 3 * 90 and picture.size[1] > 26 * len(lens.layers)


def test_a_position_before_an_image_has_no_target(tiny_pipeline):
    lens = logit_lens(tiny_pipeline, "What is it?", images=[RED], positions="[0]")  # bos, then the image
    assert lens.target_ids == [-1] and lens.targets == ["<image>"] and lens.target_probs.isnan().all()
    assert lens.to_dict()["target_probs"] == [[None]] * len(lens.layers)


def test_bad_requests_are_named(tiny_pipeline):
    with pytest.raises(LogitLensError, match="positions 'answer' needs an answer"):
        logit_lens(tiny_pipeline, "Hi", positions="answer")
    with pytest.raises(LogitLensError, match="select no token"):
        logit_lens(tiny_pipeline, "Hi", positions="image")
    with pytest.raises(LogitLensError, match="positions 'pixels'"):
        logit_lens(tiny_pipeline, "Hi", positions="pixels")
    with pytest.raises(LogitLensError, match="the answer is empty"):
        logit_lens(tiny_pipeline, "Hi", answer=" ")
    with pytest.raises(LogitLensError, match="too many to draw"):
        render(logit_lens(tiny_pipeline, "Hi " * 40, positions="all"))


def test_the_command_prints_the_table_and_writes_the_picture_and_numbers(tmp_path):
    out, numbers = tmp_path / "lens.png", tmp_path / "lens.json"
    result = run_cli("logit-lens", "What is it?", "--image", RED, "--answer", "red", "--out", str(out),
                     "--json", str(numbers))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("position") and [line.split()[1] for line in lines[1:]] == ["1", "0", "embeddings"]
    assert Image.open(out).format == "PNG"
    saved = json.loads(numbers.read_text())
    assert saved["layers"] == ["embeddings", "0", "1"] and len(saved["target_probs"][0]) == len(saved["positions"])
    bad = run_cli("logit-lens", "Hi", "--positions", "pixels", "--out", str(out))
    assert bad.returncode == 1 and "positions 'pixels'" in bad.stderr and "Traceback" not in bad.stderr
