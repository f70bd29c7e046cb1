"""``coglens finetune`` options: the learning-rate schedule (checked against its formulas, and across a resume) and
``train_on_history`` (the labels pick out exactly the history answers, as the inference prompt spells them)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from testkit import run_cli

from coglens.adapt import FinetuneConfig, finetune
from coglens.adapt.data import IGNORE_INDEX, Example, encode_example, load_examples
from coglens.adapt.train import generate_answers

HISTORY = (("Is it a photo?", "yes"), ("Which colours does it show?", "red and green"))
SECRET = ("What is the secret word?", "kiwi")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """As in test_finetune.py: the tiny model's backward pass runs far faster on one thread of a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def chats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Text-only two-turn rows whose first answer is always the secret word."""
    path = tmp_path_factory.mktemp("chats") / "train.jsonl"
    rows = [{"history": [list(SECRET)], "query": f"What is {a} plus {b}?", "answer": str(a + b)}
            for a, b in [(1, 2), (2, 2), (3, 1), (2, 5)]]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _config(chats: Path, out: Path, **changes) -> FinetuneConfig:
    values = {"output_dir": out, "train": str(chats), "batch_size": 2, "learning_rate": 1e-2, "max_steps": 6,
              "save_every": 1000, "progress": False, **changes}
    return FinetuneConfig(**values)


@pytest.fixture
def step_lrs(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The learning rate of every optimizer step the runs in a test take, read as AdamW takes the step."""
    seen: list[float] = []
    step = torch.optim.AdamW.step

    def recording(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    return seen


def _linear(step: int, warmup: int, total: int) -> float:
    return step / warmup if step < warmup else max(0.0, (total - step) / (total - warmup))


def _cosine(step: int, warmup: int, total: int) -> float:
    return step / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


# --- the learning-rate schedule -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "factor"), [("linear", _linear), ("cosine", _cosine)])
def test_each_step_trains_at_the_rate_the_schedule_formula_gives(chats, tmp_path, step_lrs, capsys, name, factor):
    finetune(_config(chats, tmp_path, lr_scheduler=name, warmup_steps=2, progress=True))

    assert step_lrs == pytest.approx([1e-2 * factor(step, 2, 6) for step in range(6)], abs=1e-12)
    assert step_lrs[0] == 0 and step_lrs[2] == pytest.approx(1e-2)  # warmup starts at 0 and peaks after 2 steps
    assert f"lr={step_lrs[-1]:.2e}" in capsys.readouterr().err  # the progress bar shows the last step's rate


def test_warmup_ratio_is_a_share_of_max_steps_rounded_up(chats, tmp_path, step_lrs):
    finetune(_config(chats, tmp_path, lr_scheduler="constant_with_warmup", warmup_ratio=0.4, max_steps=5))
    assert step_lrs == pytest.approx([0, 0.5e-2, 1e-2, 1e-2, 1e-2])  # ceil(0.4 * 5) = 2 warmup steps


class _Crash(Exception):
    pass


def test_a_run_killed_after_a_checkpoint_resumes_on_the_same_learning_rate_curve(chats, tmp_path, step_lrs,
                                                                                monkeypatch):
    settings = {"lr_scheduler": "linear", "warmup_steps": 2, "save_every": 3, "dropout": 0.1,
                "train_on_history": True}
    whole = finetune(_config(chats, tmp_path / "whole", **settings))
    from coglens.adapt import train

    save = train.save_checkpoint

    def save_then_crash(folder, *args) -> None:
        save(folder, *args)
        if folder.name == "checkpoint-3":
            raise _Crash

    monkeypatch.setattr(train, "save_checkpoint", save_then_crash)
    with pytest.raises(_Crash):
        finetune(_config(chats, tmp_path / "split", **settings))
    resumed = finetune(_config(chats, tmp_path / "split", **settings))

    assert resumed.step == 6 and len(step_lrs) == 12
    assert step_lrs[9:] == step_lrs[3:6]  # on the decaying side of the curve, where a restart would differ
    from peft import get_peft_model_state_dict

    want, got = get_peft_model_state_dict(whole.peft_model), get_peft_model_state_dict(resumed.peft_model)
    assert want.keys() == got.keys()
    assert all(torch.allclose(got[key], want[key]) for key in want)
    assert resumed.train_loss == pytest.approx(whole.train_loss, rel=1e-4)


def test_a_smoke_run_then_a_longer_one_matches_one_run_when_the_schedule_ignores_max_steps(chats, tmp_path, step_lrs):
    settings = {"lr_scheduler": "constant_with_warmup", "warmup_steps": 4, "save_every": 3}
    whole = finetune(_config(chats, tmp_path / "whole", **settings))
    first = finetune(_config(chats, tmp_path / "split", **settings, max_steps=3))  # stops inside the warmup
    resumed = finetune(_config(chats, tmp_path / "split", **settings))

    assert first.step == 3 and resumed.step == 6
    assert step_lrs[6:] == step_lrs[:6] == pytest.approx([0, 0.25e-2, 0.5e-2, 0.75e-2, 1e-2, 1e-2])
    from peft import get_peft_model_state_dict

    want, got = get_peft_model_state_dict(whole.peft_model), get_peft_model_state_dict(resumed.peft_model)
    assert all(torch.allclose(got[key], want[key]) for key in want)


def test_resuming_under_another_decaying_schedule_warns_and_follows_the_new_one(chats, tmp_path, step_lrs):
    finetune(_config(chats, tmp_path, lr_scheduler="linear", max_steps=2))
    with pytest.warns(UserWarning, match=r"checkpoint-2 was saved under .*'max_steps': 2.* this run's is .*"
                                         r"'max_steps': 4"):
        finetune(_config(chats, tmp_path, lr_scheduler="linear", max_steps=4))
    assert step_lrs == pytest.approx([1e-2, 0.5e-2, 1e-2 * 2 / 4, 1e-2 * 1 / 4])


@pytest.mark.parametrize(("changes", "message"), [
    ({"lr_scheduler": "step"}, "lr_scheduler 'step': use one of constant, constant_with_warmup, linear"),
    ({"warmup_steps": -1}, "warmup_steps must be at least 0, got -1"),
    ({"warmup_ratio": 1.5}, r"warmup_ratio must be in \[0, 1\), got 1.5"),
    ({"lr_scheduler": "linear", "warmup_steps": 2, "warmup_ratio": 0.1}, "are both set: give one of them"),
    ({"warmup_steps": 10}, "'constant' has no warmup.*use lr_scheduler 'constant_with_warmup'"),
])
def test_schedule_mistakes_fail_naming_the_field(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(output_dir=tmp_path, train="x.jsonl", **changes)


def test_the_finetune_command_takes_the_new_options_from_yaml(chats, tmp_path):
    config = tmp_path / "ft.yaml"
    config.write_text(f"train: {chats}\noutput_dir: out\nbatch_size: 2\nmax_steps: 2\nprogress: false\n"
                      "lr_scheduler: cosine\nwarmup_ratio: 0.5\ntrain_on_history: true\n")
    settings = FinetuneConfig.from_yaml(config)
    assert (settings.lr_scheduler, settings.num_warmup_steps, settings.train_on_history) == ("cosine", 1, True)
    result = run_cli("finetune", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "after 2 steps" in result.stdout


# --- train_on_history ---------------------------------------------------------------------------------------------


def _labelled_spans(row: dict) -> list[tuple[int, list[int]]]:
    """The runs of consecutive labelled positions: (start, the ids they label)."""
    spans: list[tuple[int, list[int]]] = []
    for position, (token, label) in enumerate(zip(row["input_ids"].tolist(), row["labels"].tolist(), strict=True)):
        if label == IGNORE_INDEX:
            continue
        assert label == token  # a label is the token at its own position (the model shifts them)
        if spans and spans[-1][0] + len(spans[-1][1]) == position:
            spans[-1][1].append(label)
        else:
            spans.append((position, [label]))
    return spans


@pytest.mark.parametrize("variant", ["cogvlm2", "cogvlm", "cogvlm2-video"])
@pytest.mark.parametrize("template", ["chat", "vqa"])
@pytest.mark.parametrize("with_media", [False, True])
def test_history_labels_are_exactly_the_answers_tokens_of_the_inference_prompt(tiny_pipelines, tmp_path, variant,
                                                                                template, with_media):
    pipe = tiny_pipelines(variant)
    tok = pipe.tokenizer
    media, images = {}, None
    if with_media and variant == "cogvlm2-video":
        size = pipe.config.vision_config.image_size
        media = {"video": torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))}
        images = [media["video"]]
    elif with_media:
        Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
        media, images = {"image": tmp_path / "red.png"}, [Image.open(tmp_path / "red.png")]
    example = Example("Anything else?", "a blue car", history=HISTORY, **media)

    row = encode_example(example, tok, pipe.config, template, train_on_history=True)

    prompt = pipe.build_inputs(example.query, images=images, history=HISTORY, template=template)
    n = len(prompt["input_ids"])
    assert row["input_ids"][:n].tolist() == prompt["input_ids"].tolist()  # the prompt is what inference sees
    assert row["token_type_ids"][:n].tolist() == prompt["token_type_ids"].tolist()
    spans = _labelled_spans(row)
    assert [tok.decode(ids) for _, ids in spans] == [" yes", " red and green", " a blue car" + tok.eos_token]
    cue = "Answer:" if template == "chat" else "Short answer:"
    for start, ids in spans[:2]:  # each history answer right after its cue; the newline after it unlabelled
        assert tok.decode(row["input_ids"][:start]).endswith(cue)
        assert tok.decode(row["input_ids"][start + len(ids):n]).startswith("\nQuestion:")
    # without the option, only the final answer and eos are labelled, on the same row
    plain = encode_example(example, tok, pipe.config, template)
    assert plain["input_ids"].tolist() == row["input_ids"].tolist()
    assert [tok.decode(ids) for _, ids in _labelled_spans(plain)] == [" a blue car" + tok.eos_token]


def test_an_answer_token_merged_with_the_newline_after_it_stays_unlabelled(tiny_pipeline):
    tok = tiny_pipeline.tokenizer
    assert tok.convert_ids_to_tokens(tok.encode("yes.\n", add_special_tokens=False))[-1] == ".Ċ"  # one token
    example = Example("And?", "no", history=(("Is it a photo?", "yes."),))
    with pytest.warns(UserWarning, match="stays unlabelled"):
        row = encode_example(example, tok, tiny_pipeline.config, "chat", train_on_history=True)
    assert [tok.decode(ids) for _, ids in _labelled_spans(row)] == [" yes", " no" + tok.eos_token]


class _CueMergingTokenizer:
    """One id per character, except ': ' as one token: a merge of a cue with its answer that the tiny tokenizers
    never make."""

    bos_token_id, eos_token_id = 1, 2

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [3 if piece == ": " else ord(piece) + 10 for piece in re.findall(r": |.", text, flags=re.DOTALL)]


def test_a_history_answer_merged_with_its_cue_is_refused_naming_the_row(tiny_pipeline, chats):
    example = load_examples(str(chats))[2]
    with pytest.raises(ValueError, match=rf"{re.escape(str(chats))}:3: the tokenizer merges the start of history "
                                         r"answer 0 \('kiwi'\)"):
        encode_example(example, _CueMergingTokenizer(), tiny_pipeline.config, "chat", train_on_history=True)


def test_the_base_template_has_no_history_to_learn(tiny_pipeline):
    example = Example("And?", "no", history=(SECRET,))
    with pytest.raises(ValueError, match="the 'base' template leaves history out of the prompt"):
        encode_example(example, tiny_pipeline.tokenizer, tiny_pipeline.config, "base", train_on_history=True)


def test_training_on_history_teaches_the_history_answers(chats, tmp_path, tiny_pipeline):
    asked = [Example(*SECRET)]  # the first turn of every row, asked on its own: the same prompt tokens
    steps = len(tiny_pipeline.tokenizer.encode(" kiwi", add_special_tokens=False))
    assert generate_answers(tiny_pipeline, asked, "chat", steps) != ["kiwi"]

    learned = finetune(_config(chats, tmp_path / "history", max_steps=15, train_on_history=True))
    final_only = finetune(_config(chats, tmp_path / "final", max_steps=15))

    assert generate_answers(learned.pipeline, asked, "chat", steps) == ["kiwi"]
    assert generate_answers(final_only.pipeline, asked, "chat", steps) != ["kiwi"]
