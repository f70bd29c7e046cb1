"""``--quantize`` through the real ``coglens`` entry point (run in this process: testkit.run_cli): the commands load
the model quantized (the pipeline they load is spied on and inspected), answer with it, list its quantized modules,
and refuse to quantize a checkpoint that was saved quantized."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from testkit import run_cli

from coglens.engine import SamplingParams
from coglens.pipeline import Pipeline

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/images/red_circle.png"
LANGUAGE_LINEAR = "model.layers.0.mlp.language_mlp.down_proj"
VISION_LINEAR = "model.vision.transformer.layers.0.mlp.fc1"


def is_quantized(module: torch.nn.Module) -> bool:
    """A linear layer whose weight is no longer a plain float tensor (bitsandbytes or torchao replaced it)."""
    weight = module.weight
    return weight.dtype not in (torch.float32, torch.bfloat16, torch.float16) or type(weight) not in (
        torch.Tensor, torch.nn.Parameter) or type(weight.data) is not torch.Tensor


@pytest.fixture
def loaded(monkeypatch) -> list[Pipeline]:
    """Every pipeline the command loads, as Pipeline.load returned it."""
    pipes: list[Pipeline] = []
    original = Pipeline.load.__func__

    def spy(cls, *args, **kwargs):
        pipes.append(original(cls, *args, **kwargs))
        return pipes[-1]

    monkeypatch.setattr(Pipeline, "load", classmethod(spy))
    return pipes


def test_ask_answers_with_the_quantized_model(loaded):
    out = run_cli("ask", "--model", "tiny:cogvlm2", "--quantize", "int8", "--image", str(EXAMPLE), "Describe it.",
                  "--max-new-tokens", "8")
    assert out.returncode == 0, out.stderr
    (pipe,) = loaded
    model = pipe.model
    assert is_quantized(model.get_submodule(LANGUAGE_LINEAR))
    assert not is_quantized(model.get_submodule(VISION_LINEAR)) and not is_quantized(model.lm_head)  # the default
    expected = pipe.ask("Describe it.", images=[str(EXAMPLE)], params=SamplingParams(max_new_tokens=8)).text
    assert expected and out.stdout == expected + "\n"


def test_quantize_vision_quantizes_the_vision_tower_and_lm_head_too(loaded):
    out = run_cli("ask", "--quantize", "int8", "--quantize-vision", "hi", "--max-new-tokens", "2")
    assert out.returncode == 0, out.stderr
    model = loaded[0].model
    assert all(is_quantized(model.get_submodule(name)) for name in (LANGUAGE_LINEAR, VISION_LINEAR, "lm_head"))


def _class_column(out: str) -> dict[str, str]:
    return {cells[1].strip(): cells[2].strip() for cells in (line.split("│") for line in out.splitlines())
            if len(cells) > 3 and "model." in cells[1]}


def test_modules_lists_the_quantized_classes(loaded):
    int8 = run_cli("modules", "--quantize", "int8", "--no-dry-run", "--match", LANGUAGE_LINEAR, "--match",
                   VISION_LINEAR)
    nf4 = run_cli("modules", "--quantize", "nf4", "--quantize-vision", "--no-dry-run", "--match", VISION_LINEAR)
    assert int8.returncode == 0 and nf4.returncode == 0, int8.stderr + nf4.stderr
    # torchao (int8 on a CPU) keeps the Linear class and quantizes its weight's tensor: the table names that tensor
    weight = loaded[0].model.get_submodule(LANGUAGE_LINEAR).weight
    assert type(weight.data) is not torch.Tensor
    assert _class_column(int8.stdout) == {LANGUAGE_LINEAR: f"Linear ({type(weight.data).__name__})",
                                          VISION_LINEAR: "Linear"}
    assert _class_column(nf4.stdout) == {VISION_LINEAR: "Linear4bit"}  # bitsandbytes swaps the class


def _params_column(out: str) -> dict[str, str]:
    return {cells[1].strip(): cells[3].strip() for cells in (line.split("│") for line in out.splitlines())
            if len(cells) > 3 and "model." in cells[1]}


def test_modules_counts_the_unpacked_parameters_of_4bit_layers(tiny_pipeline):
    nf4 = run_cli("modules", "--quantize", "nf4", "--quantize-vision", "--no-dry-run", "--match", VISION_LINEAR)
    assert nf4.returncode == 0, nf4.stderr
    expected = sum(p.numel() for p in tiny_pipeline.model.get_submodule(VISION_LINEAR).parameters(recurse=False))
    assert _params_column(nf4.stdout) == {VISION_LINEAR: f"{expected:,}"}


def test_chat_answers_with_the_quantized_model(loaded, tmp_path, monkeypatch):
    transcript = tmp_path / "chat.json"
    monkeypatch.setattr("sys.stdin", io.StringIO(f"What is in the image?\n/save {transcript}\n"))
    out = run_cli("chat", "--quantize", "int8", "--image", str(EXAMPLE), "--max-new-tokens", "8")
    assert out.returncode == 0, out.stderr
    (pipe,) = loaded
    assert is_quantized(pipe.model.get_submodule(LANGUAGE_LINEAR))
    (turn,) = json.loads(transcript.read_text())["turns"]
    expected = pipe.ask("What is in the image?", images=[str(EXAMPLE)], params=SamplingParams(max_new_tokens=8))
    assert turn["answer"] == expected.text and expected.text in out.stdout


def test_web_serves_the_quantized_model(loaded, monkeypatch):
    pytest.importorskip("gradio")
    launched: list[Pipeline] = []
    monkeypatch.setattr("coglens.chat.web.launch", lambda pipe, **kwargs: launched.append(pipe))
    out = run_cli("web", "--quantize", "int8", "--port", "0")
    assert out.returncode == 0, out.stderr
    assert launched == loaded and is_quantized(launched[0].model.get_submodule(LANGUAGE_LINEAR))


def test_a_saved_quantized_checkpoint_loads_as_it_is_and_is_not_quantized_again(loaded, tmp_path):
    from coglens.modeling.quantization import quantize_checkpoint
    from coglens.tiny import tiny_model_path

    folder = quantize_checkpoint(tiny_model_path("cogvlm2"), tmp_path / "nf4", "nf4")
    out = run_cli("ask", "--model", str(folder), "hi", "--max-new-tokens", "4")
    assert out.returncode == 0, out.stderr
    assert type(loaded[0].model.get_submodule(LANGUAGE_LINEAR)).__name__ == "Linear4bit"  # as saved
    assert out.stdout == loaded[0].ask("hi", params=SamplingParams(max_new_tokens=4)).text + "\n"
    again = run_cli("ask", "--model", str(folder), "--quantize", "int8", "hi")
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert f"{folder} is already quantized (bitsandbytes" in again.stderr and "leave out" in again.stderr


def test_quantize_vision_alone_is_refused_by_the_api():
    with pytest.raises(ValueError, match="needs a quantize scheme"):
        Pipeline.load(quantize_vision=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="int4 runs where CUDA is")
def test_int4_on_a_cpu_says_so_and_offers_what_runs_before_loading(loaded):
    out = run_cli("ask", "--quantize", "int4", "hi")
    assert out.returncode == 1 and "Traceback" not in out.stderr and loaded == []
    assert out.stderr.strip().splitlines()[-1].startswith("error: int4") and "needs a CUDA GPU" in out.stderr
    assert "use nf4" in out.stderr
