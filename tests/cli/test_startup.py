"""``coglens`` starts fast: building the command imports neither torch, transformers, fastapi nor gradio, so
``--help`` answers at once and a bad option fails before any of them (or the model) loads. ``import coglens``
stays cheap too, and still registers the Auto classes with transformers.

Every check runs in a fresh interpreter: this test process has torch loaded already (conftest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from testkit import coglens_command

HEAVY = ("torch", "transformers", "fastapi", "gradio", "uvicorn", "safetensors", "sqlalchemy", "numpy")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples/images/red_circle.png"
HELP_SECONDS = 1.5  # the min of a few runs: robust on a loaded 2-core CI machine


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COGLENS_DEBUG": ""})


def loaded_after(code: str) -> list[str]:
    """The HEAVY modules in sys.modules after running ``code`` in a fresh interpreter."""
    out = python(f"import json, sys\n{code}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_building_the_cli_imports_nothing_heavy():
    assert loaded_after("import coglens.cli.main") == []


def test_help_imports_nothing_heavy():
    code = "from coglens.cli.main import main\nsys.argv = ['coglens', 'ask', '--help']\ntry:\n    main()\n" \
           "except SystemExit:\n    pass"
    assert loaded_after(code) == []


def test_import_coglens_does_not_import_torch():
    assert loaded_after("import coglens\nassert coglens.__version__") == []


def test_the_public_names_load_on_first_use():
    out = python(
        "import sys, coglens\n"
        "assert 'torch' not in sys.modules and {'CogvlmConfig', 'CogvlmForCausalLM'} <= set(dir(coglens))\n"
        "from coglens import Cogvlm2Config, CogvlmForCausalLM, register_auto_classes\n"
        "import coglens.modeling as m\n"
        "assert CogvlmForCausalLM is m.CogvlmForCausalLM and Cogvlm2Config is m.Cogvlm2Config\n"
        "assert coglens.CogvlmVisionConfig is m.CogvlmVisionConfig and callable(register_auto_classes)\n"
        "try:\n    coglens.NoSuchName\nexcept AttributeError as e:\n    print(e)\n"
    )
    assert out.returncode == 0, out.stderr
    assert "has no attribute 'NoSuchName'" in out.stdout


@pytest.mark.parametrize("first", [
    "import coglens; import transformers",  # the import hook registers once transformers is in
    "import coglens.modeling",  # coglens.modeling imports transformers while half initialised
    "import coglens.processing",  # so does coglens.processing, which register_auto_classes imports too
    "import transformers; import coglens",  # transformers already there: registered at once
])
def test_auto_classes_are_registered(first):
    out = python(
        f"{first}\n"
        "import coglens\n"
        "from transformers import CONFIG_MAPPING, AutoModelForCausalLM\n"
        "from coglens.modeling import Cogvlm2Config, Cogvlm2ForCausalLM, CogvlmConfig\n"
        "assert CONFIG_MAPPING['cogvlm2'] is Cogvlm2Config and CONFIG_MAPPING['cogvlm'] is CogvlmConfig\n"
        "assert AutoModelForCausalLM._model_mapping[Cogvlm2Config] is Cogvlm2ForCausalLM\n"
        "import sys\n"
        "assert not any(type(f).__module__ == 'coglens' for f in sys.meta_path), sys.meta_path  # hook gone\n"
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("args", [["--help"], ["ask", "--help"]])
def test_help_answers_in_well_under_a_second(args):
    times = []
    for _ in range(5):
        start = time.perf_counter()
        out = subprocess.run([*coglens_command(), *args], capture_output=True, text=True, timeout=120)
        times.append(time.perf_counter() - start)
        assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout
    assert min(times) < HELP_SECONDS, f"coglens {' '.join(args)} took {min(times):.2f} s at best: {times}"


FAIL_FAST = f"""
import json, sys
from coglens.cli.main import main
sys.argv = ['coglens', *json.loads(sys.argv[1])]
try:
    main()
finally:
    print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
"""


def _bad_args(tmp: Path) -> list[tuple[list[str], int, list[str]]]:
    """(arguments, exit code, words of the error) of mistakes that need no model to be found."""
    missing, a_file, img = str(tmp / "missing.png"), tmp / "a_file", str(EXAMPLE)
    a_file.write_text("x")
    return [
        (["ask", "--template", "nope", "hi"], 2, ["--template", "nope"]),
        (["ask", "--image", missing, "hi"], 1, ["error: --image", "missing.png", "does not exist"]),
        (["ask", "--image", str(tmp), "hi"], 1, ["error: --image", "is a directory"]),
        (["ask", "--video", str(tmp / "none.mp4"), "hi"], 1, ["error: --video", "none.mp4"]),
        (["ask", "--image", img, "--boxes-out", str(a_file / "b.png"), "hi"], 1,
         ["error: --boxes-out", "not a folder"]),
        (["ask", "--image", img, "--boxes-out", str(tmp / "b.nope"), "hi"], 1, ["error: --boxes-out"]),
        (["ask", "--dtype", "int8", "hi"], 1, ["error: unknown dtype 'int8'"]),
        (["ask", "--top-p", "0", "hi"], 2, ["--top-p"]),
        (["ask", "--quantize", "int3", "hi"], 2, ["--quantize", "'int3' is not one of int8, int4, nf4, fp4"]),
        (["ask", "--quantize-vision", "hi"], 1, ["error: --quantize-vision needs --quantize"]),
        (["chat", "--quantize", "8bit"], 2, ["--quantize", "8bit"]),
        (["explain", "--image", img, "--quantize-vision", "hi"], 1, ["error: --quantize-vision needs"]),
        (["modules", "--quantize", "q4"], 2, ["--quantize"]),
        (["serve", "--quantize", "int16"], 2, ["--quantize"]),
        (["serve", "--quantize-vision"], 1, ["error: --quantize-vision needs"]),
        (["web", "--quantize", "nf8"], 2, ["--quantize"]),
        (["extract", "--quantize", "int2", "-M", "x"], 2, ["--quantize"]),
        (["ask", "--max-new-tokens", "0", "hi"], 2, ["--max-new-tokens"]),
        (["ask", "--video-strategy", "fast", "hi"], 2, ["--video-strategy"]),
        (["chat", "--template", "nope"], 2, ["--template"]),
        (["chat", "--image", missing], 1, ["error: --image", "missing.png"]),
        (["explain", "--image", missing, "hi"], 1, ["error: --image", "missing.png"]),
        (["explain", "--image", img, "--layers", "first", "hi"], 2, ["--layers"]),
        (["explain", "--image", img, "--out", "x.jpg", "hi"], 2, [".png"]),
        (["modules", "--dtype", "int8"], 1, ["error: unknown dtype"]),
        (["modules", "--log", "--logs-dir", str(a_file / "logs")], 1, ["error: --logs-dir", "not a folder"]),
        (["serve", "--max-queue", "0"], 1, ["error: --max-queue must be > 0"]),
        (["serve", "--allow-local-media", str(tmp / "nodir")], 1, ["error: --allow-local-media", "not a directory"]),
        (["serve", "--log-level", "loud"], 1, ["error: --log-level 'loud' is not a level"]),
        (["serve", "--template", "nope"], 2, ["--template"]),
        (["web", "--dtype", "int8"], 1, ["error: unknown dtype"]),
        (["extract", "--config", str(tmp / "none.yaml")], 2, ["--config", "does not exist"]),
        (["extract", "--input-dir", str(tmp / "nodir"), "-M", "x"], 1, ["error: --input-dir", "does not exist"]),
        (["extract", "--output", str(a_file / "x.db"), "-M", "x"], 1, ["error: --output", "not a folder"]),
        (["export", str(tmp / "none.db"), str(tmp / "x.npz")], 1, ["error: no database at"]),
        (["export", str(tmp / "none.db"), str(tmp / "x.csv")], 2, [".npz"]),
        (["merge", str(tmp / "all.db"), str(tmp / "none.db")], 1, ["error: no database at"]),
        (["tiny", "cogagent", str(tmp / "t")], 2, ["cogvlm2-video"]),
        (["tiny", "cogvlm2", str(a_file)], 2, ["is a file"]),
    ]


def test_bad_options_fail_before_anything_heavy_loads(tmp_path):
    for args, code, words in _bad_args(tmp_path):
        start = time.perf_counter()
        out = python(FAIL_FAST, json.dumps(args))
        took = time.perf_counter() - start
        what = f"coglens {' '.join(args)}: {out.stderr}"
        assert out.returncode == code, what
        assert json.loads(out.stdout.splitlines()[-1]) == [], what  # nothing heavy was imported
        assert "Traceback" not in out.stderr, what
        stderr = " ".join(out.stderr.replace("│", " ").split())  # the usage-error box wraps lines
        assert all(word in stderr or word in out.stderr for word in words), what
        assert took < 30, what  # no model load; a generous bound for a busy machine

