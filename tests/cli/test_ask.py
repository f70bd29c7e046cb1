"""`coglens ask` end to end through the console script's entry point (run in this process: testkit.run_cli), and
its clear errors for bad input."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from PIL import Image
from testkit import coglens_command, copy_checkpoint, run_cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/images/red_circle.png"


def test_ask_streams_an_answer_with_the_tiny_model():
    out = run_cli("ask", "--image", str(EXAMPLE), "What colour is the circle?", "--max-new-tokens", "6")
    assert out.returncode == 0, out.stderr
    assert "built-in tiny cogvlm2 model" in out.stderr and "meaningless" in out.stderr
    assert out.stdout.strip()


def test_ask_same_answer_as_the_pipeline(tiny_pipelines):
    from coglens.engine import SamplingParams

    expected = tiny_pipelines("cogvlm").ask(
        "Describe it.", images=[str(EXAMPLE)], params=SamplingParams(max_new_tokens=8)).text
    out = run_cli("ask", "--model", "tiny:cogvlm", "--image", str(EXAMPLE), "Describe it.", "--max-new-tokens", "8")
    assert out.returncode == 0, out.stderr
    assert out.stdout == expected + "\n"


@pytest.mark.parametrize("make,needle", [
    (lambda p: p / "missing.png", "missing.png"),
    (lambda p: (p / "bad.png").write_bytes(b"not an image at all") and p / "bad.png", "bad.png"),
])
def test_ask_bad_image_is_one_clear_line(tmp_path, make, needle):
    path = make(tmp_path)
    out = run_cli("ask", "--image", str(path), "hi")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("error:") and needle in out.stderr
    assert "Traceback" not in out.stderr


def test_ask_refuses_a_decompression_bomb(tmp_path):
    big = tmp_path / "big.png"
    Image.new("1", (20_000, 20_000)).save(big)  # tiny file, 400 megapixels once decoded
    out = run_cli("ask", "--image", str(big), "hi")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "pixels" in out.stderr.lower()


def test_ask_prompt_longer_than_the_context(tmp_path):
    out = run_cli("ask", "word " * 5000, "--max-new-tokens", "4")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "positions" in out.stderr


def test_ask_image_given_to_a_video_model():
    out = run_cli("ask", "--model", "tiny:cogvlm2-video", "--image", str(EXAMPLE), "hi")
    assert out.returncode == 1 and "--video" in out.stderr and "Traceback" not in out.stderr


def test_ask_on_a_folder_that_is_not_a_checkpoint(tmp_path):
    out = run_cli("ask", "--model", str(tmp_path), "hi")
    assert out.returncode == 1 and "not a CogVLM checkpoint" in out.stderr and "Traceback" not in out.stderr


def test_ask_tokenizer_that_does_not_fit_the_embedding(tmp_path):
    """A checkpoint whose embedding has 100 rows, with the tiny tokenizer's larger vocabulary."""
    from safetensors.torch import load_file, save_file

    from coglens.tiny import tiny_model_path

    folder = copy_checkpoint(tiny_model_path("cogvlm2"), tmp_path / "ckpt",
                             config=lambda cfg: cfg.update(vocab_size=100, bos_token_id=1, eos_token_id=2,
                                                           pad_token_id=0))
    for shard in folder.glob("*.safetensors"):
        state = load_file(shard)
        for key in ("model.embed_tokens.weight", "lm_head.weight"):
            if key in state:
                state[key] = state[key][:100].contiguous()
        save_file(state, shard, metadata={"format": "pt"})
    out = run_cli("ask", "--model", str(folder), "hi")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "100" in out.stderr and "vocab" in out.stderr.lower()


def test_a_fresh_process_says_only_what_matters_on_stderr():
    """With the quant extra installed, transformers imports torchao, which logs on every start that its CUDA
    kernels and Triton are missing on a CPU machine; none of that reaches the user."""
    out = subprocess.run([*coglens_command(), "ask", "hi", "--max-new-tokens", "1"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        "coglens: using the built-in tiny cogvlm2 model (random weights: its outputs are meaningless)"]
