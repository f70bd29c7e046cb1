"""``coglens.adapt.finetune`` / ``coglens finetune``: LoRA training on the tiny CogVLM2, checked against the
pipeline's own prompt encoding, peft's loader, and a task the base model cannot do."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from openai import OpenAI
from PIL import Image
from serve_helpers import data_url, run_server
from testkit import run_cli

from coglens.adapt import FinetuneConfig, finetune
from coglens.adapt.data import IGNORE_INDEX, Example, encode_example, load_examples
from coglens.adapt.train import generate_answers
from coglens.serve.settings import ServeSettings

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
QUERY = "What colour is the image?"


def _colour_task(folder: Path) -> tuple[Path, Path]:
    """Solid images of three colours (each shade jittered): 18 to train on, 6 held out."""
    rng = random.Random(0)
    train, held = [], []
    for i in range(8):
        for name, rgb in COLOURS.items():
            shade = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in rgb)
            Image.new("RGB", (32, 32), shade).save(folder / f"{name}{i}.png")
            (held if i >= 6 else train).append({"image": f"{name}{i}.png", "query": QUERY, "answer": name})
    paths = folder / "train.jsonl", folder / "eval.jsonl"
    for path, rows in zip(paths, (train, held), strict=True):
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return paths


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """The tiny model's matrices gain nothing from threads, and a backward pass on two threads of a busy CPU runs
    ten times slower than on one: train on one, then give the session its setting back."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def colour_task(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _colour_task(tmp_path_factory.mktemp("colours"))


def _config(task: tuple[Path, Path], out: Path, **changes) -> FinetuneConfig:
    values = {"output_dir": out, "train": str(task[0]), "eval": str(task[1]), "batch_size": 6,
              "learning_rate": 5e-3, "max_steps": 20, "save_every": 1000, "progress": False, **changes}
    return FinetuneConfig(**values)


def test_the_adapted_model_answers_held_out_colours_the_base_model_cannot(colour_task, tiny_pipeline, tmp_path):
    held_out = load_examples(str(colour_task[1]))
    expected = [row.answer for row in held_out]
    assert generate_answers(tiny_pipeline, held_out, None, 8) != expected  # random weights: no colour sense

    result = finetune(_config(colour_task, tmp_path))

    assert result.step == 20
    assert generate_answers(result.pipeline, held_out, None, 8) == expected
    assert result.eval is not None and result.eval["exact_match"] == 1.0 and result.eval["loss"] < 0.1
    # the saved adapter is peft's own format: peft loads it onto a fresh base model, with the same outputs
    from peft import PeftModel

    from coglens.pipeline import Pipeline

    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    fresh = Pipeline.load("tiny:cogvlm2", device="cpu")
    loaded = PeftModel.from_pretrained(fresh.model, tmp_path).eval()
    assert generate_answers(fresh, held_out, None, 8) == expected
    inputs = fresh.build_inputs(QUERY, images=[Image.open(held_out[0].image)])
    args = {"input_ids": inputs["input_ids"][None], "token_type_ids": inputs["token_type_ids"][None],
            "images": [inputs["images"]]}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**args).logits, result.peft_model.eval()(**args).logits)

    # merged into the weights, and served beside the base model: the same greedy answers, token for token
    merged = Pipeline.load("tiny:cogvlm2", adapter=tmp_path, device="cpu")
    assert generate_answers(merged, held_out, None, 8) == expected
    with run_server(ServeSettings(model="tiny:cogvlm2", device="cpu", adapters={"colours": tmp_path})) as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        for row in held_out:
            content = [{"type": "image_url", "image_url": {"url": data_url(Path(row.image).read_bytes(), "image/png")}},
                       {"type": "text", "text": row.query}]
            for model, answer in (("colours", row.answer), ("tiny:cogvlm2", None)):
                reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                                       max_tokens=8, temperature=0).choices[0].message.content
                assert reply.strip() == (answer or generate_answers(tiny_pipeline, [row], None, 8)[0])


def test_training_rows_are_the_inference_prompt_plus_labelled_answer_and_eos(tiny_pipeline, colour_task):
    tok, config = tiny_pipeline.tokenizer, tiny_pipeline.config
    image = colour_task[0].parent / "red0.png"
    history = (("Is it a photo?", "yes"),)
    row = encode_example(Example(QUERY, "red", image=image, history=history), tok, config, "vqa")

    prompt = tiny_pipeline.build_inputs(QUERY, images=[Image.open(image)], history=history, template="vqa")
    n = len(prompt["input_ids"])
    answer = tok.encode(" red", add_special_tokens=False) + [tok.eos_token_id]
    assert row["input_ids"].tolist() == prompt["input_ids"].tolist() + answer
    assert row["token_type_ids"].tolist() == prompt["token_type_ids"].tolist() + [0] * len(answer)
    assert row["labels"].tolist() == [IGNORE_INDEX] * n + answer
    torch.testing.assert_close(row["images"][0], prompt["images"][0])
    assert tok.decode(prompt["input_ids"][-12:]).endswith("Short answer:")


def test_video_rows_put_the_clip_where_inference_puts_it(tiny_pipelines):
    pipe = tiny_pipelines("cogvlm2-video")
    size = pipe.config.vision_config.image_size
    clip = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    row = encode_example(Example("What happens?", "nothing", video=clip), pipe.tokenizer, pipe.config, None)

    prompt = pipe.build_inputs("What happens?", images=[clip])
    n = len(prompt["input_ids"])
    assert row["input_ids"][:n].tolist() == prompt["input_ids"].tolist()
    assert row["token_type_ids"][:n].tolist() == prompt["token_type_ids"].tolist()
    assert (row["labels"][:n] == IGNORE_INDEX).all() and (row["labels"][n:] != IGNORE_INDEX).all()
    assert row["images"][0] is clip


def test_bfloat16_trains_a_float32_adapter_on_bfloat16_weights(colour_task, tmp_path):
    result = finetune(_config(colour_task, tmp_path, eval=None, max_steps=2, dtype="bfloat16"))
    assert result.pipeline.dtype == torch.bfloat16
    trainable = [p for p in result.peft_model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)  # peft keeps adapters in float32
    assert result.train_loss is not None and 0 < result.train_loss < 20


def test_a_rerun_resumes_from_the_last_checkpoint_and_matches_an_uninterrupted_run(colour_task, tmp_path):
    whole = finetune(_config(colour_task, tmp_path / "whole", eval=None, max_steps=6, dropout=0.1))
    first = finetune(_config(colour_task, tmp_path / "split", eval=None, max_steps=3, save_every=3, dropout=0.1))
    assert first.step == 3 and (tmp_path / "split" / "checkpoint-3" / "adapter_model.safetensors").is_file()
    resumed = finetune(_config(colour_task, tmp_path / "split", eval=None, max_steps=6, save_every=3, dropout=0.1))

    assert resumed.step == 6 and (tmp_path / "split" / "checkpoint-6").is_dir()
    from peft import get_peft_model_state_dict

    want, got = get_peft_model_state_dict(whole.peft_model), get_peft_model_state_dict(resumed.peft_model)
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key])
    assert resumed.train_loss == pytest.approx(whole.train_loss, rel=1e-4)


@pytest.mark.parametrize(("groups", "adapted", "untouched"), [
    (["language_experts"], "language_expert_query_key_value", "vision_expert_query_key_value"),
    (["vision_tower"], "vision.transformer.layers.0.mlp.fc1", "language_mlp"),
    ([r"model\.layers\.0\.mlp\.language_mlp\.down_proj"], "layers.0.mlp.language_mlp.down_proj", "layers.1."),
])
def test_lora_goes_on_the_modules_named_by_group_or_pattern(colour_task, tmp_path, groups, adapted, untouched):
    result = finetune(_config(colour_task, tmp_path, eval=None, max_steps=1, target_modules=groups))
    lora = {name.removesuffix(".lora_A") for name, _ in result.peft_model.named_modules() if name.endswith("lora_A")}
    assert any(adapted in name for name in lora)
    assert not any(untouched in name for name in lora)
    trainable = {name for name, p in result.peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)


def test_gradient_checkpointing_and_a_csv_manifest_train_the_same_weights(colour_task, tmp_path):
    rows = [json.loads(line) for line in colour_task[0].read_text().splitlines()]
    csv_path = colour_task[0].parent / "train.csv"
    csv_path.write_text("image,query,answer\n" + "".join(f"{r['image']},{r['query']},{r['answer']}\n" for r in rows))
    plain = finetune(_config(colour_task, tmp_path / "a", eval=None, max_steps=2, grad_accum=2, batch_size=2))
    checkpointed = finetune(_config(colour_task, tmp_path / "b", train=str(csv_path), eval=None, max_steps=2,
                                    grad_accum=2, batch_size=2, gradient_checkpointing=True))
    assert checkpointed.train_loss == pytest.approx(plain.train_loss, rel=1e-4)


def test_the_finetune_command_runs_a_yaml_config_and_resumes(colour_task, tmp_path):
    config = tmp_path / "ft.yaml"
    config.write_text(f"train: {colour_task[0]}\neval: {colour_task[1]}\noutput_dir: out\nbatch_size: 6\n"
                      "learning_rate: 0.005\nsave_every: 2\neval_every: 1\nprogress: false\n")
    first = run_cli("finetune", "--config", str(config), "--max-steps", "2")
    assert first.returncode == 0, first.stderr
    assert "step 1: eval loss" in first.stdout  # eval_every: mid-run evaluations
    assert "after 2 steps" in first.stdout and "exact match" in first.stdout
    assert (tmp_path / "out" / "adapter_config.json").is_file()
    again = run_cli("finetune", "--config", str(config), "--max-steps", "4")
    assert again.returncode == 0 and "after 4 steps" in again.stdout


def test_config_mistakes_fail_before_any_model_loads(tmp_path):
    config = tmp_path / "ft.yaml"
    config.write_text("train: data.jsonl\noutput_dir: out\nlearning_rat: 0.1\n")
    result = run_cli("finetune", "--config", str(config))
    assert result.returncode == 1 and "unknown option(s) learning_rat" in result.stderr
    with pytest.raises(ValueError, match="dtype 'float16'"):
        FinetuneConfig(output_dir=tmp_path, train="x.jsonl", dtype="float16")
    with pytest.raises(ValueError, match="does not exist"):
        load_examples(str(tmp_path / "missing.jsonl"))


def test_qlora_trains_lora_on_4_bit_base_weights(colour_task, tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    result = finetune(_config(colour_task, tmp_path, quantize="nf4", max_steps=6, gradient_checkpointing=True))

    assert any(isinstance(module, bnb.nn.Linear4bit) for module in result.pipeline.model.modules())
    trainable = [p for name, p in result.peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert result.eval is not None and result.eval["loss"] < 3.0  # the untrained model's is about 9.5


def test_a_hugging_face_dataset_gives_the_same_examples_as_its_manifest(colour_task, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    rows = [json.loads(line) for line in colour_task[1].read_text().splitlines()]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test.jsonl").write_text("".join(
        json.dumps({**row, "image": str(colour_task[1].parent / row["image"])}) + "\n" for row in rows))

    assert load_examples(f"hf:{tmp_path / 'data'}:test") == load_examples(str(colour_task[1]))
