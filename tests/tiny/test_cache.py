"""tiny_model_path builds once, atomically, under $COGLENS_CACHE, and says that the model is a toy."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coglens.tiny import cache, tiny_model_path
from coglens.tiny.cache import TINY_FORMAT_VERSION
from coglens.tiny.checkpoint import write_tiny_checkpoint


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("COGLENS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_builds_under_cache_once_and_warns(cache_dir, caplog, tiny_dirs):
    with caplog.at_level(logging.WARNING, logger="coglens.tiny.cache"):
        path = tiny_model_path("cogvlm2-video")
    assert path == cache_dir / "tiny" / f"cogvlm2-video-v{TINY_FORMAT_VERSION}"
    assert _folder_bytes(path) == _folder_bytes(tiny_dirs["cogvlm2-video"])
    assert [r.getMessage() for r in caplog.records] == [
        "coglens: using the built-in tiny cogvlm2-video model (random weights: its outputs are meaningless)"
    ]
    stamp = (path / "config.json").stat().st_mtime_ns
    assert tiny_model_path("cogvlm2-video") == path
    assert (path / "config.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no staging folder left behind


def test_default_variant_and_home_default(tmp_path, monkeypatch):
    monkeypatch.delenv("COGLENS_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert tiny_model_path() == tmp_path / ".cache" / "coglens" / "tiny" / f"cogvlm2-v{TINY_FORMAT_VERSION}"


def test_unknown_variant_is_a_value_error_naming_the_choices(cache_dir):
    with pytest.raises(ValueError, match="'llava'.*cogvlm, cogvlm2, cogvlm2-video"):
        tiny_model_path("llava")
    assert not cache_dir.exists()


def test_losing_a_build_race_keeps_the_winner(cache_dir, monkeypatch):
    """Another process finishes its rename while we are still writing: we use its copy and drop ours."""
    target = cache_dir / "tiny" / f"cogvlm-v{TINY_FORMAT_VERSION}"

    def write_then_lose(variant: str, out_dir: Path) -> Path:
        write_tiny_checkpoint(variant, out_dir)
        write_tiny_checkpoint(variant, target)  # the competitor's finished folder
        (target / "config.json").write_text("{}\n")  # mark it, to see whose copy survives
        return out_dir

    monkeypatch.setattr(cache, "write_tiny_checkpoint", write_then_lose)
    assert tiny_model_path("cogvlm") == target
    assert (target / "config.json").read_text() == "{}\n"
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_failed_build_leaves_nothing(cache_dir, monkeypatch):
    def fail(variant: str, out_dir: Path) -> Path:
        (Path(out_dir) / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(cache, "write_tiny_checkpoint", fail)
    with pytest.raises(OSError, match="disk full"):
        tiny_model_path("cogvlm")
    assert list((cache_dir / "tiny").iterdir()) == []


_RACER = """
import os, sys, time
from pathlib import Path
from coglens.tiny import tiny_model_path
gate = Path(sys.argv[1])
(gate / f"ready-{os.getpid()}").touch()
while not (gate / "go").exists():
    time.sleep(0.005)
print(tiny_model_path("cogvlm"))
"""


def test_concurrent_processes_get_one_complete_folder(cache_dir, tmp_path, tiny_dirs):
    """Separate interpreters (fork after torch/tokenizers threads is unsafe), released together once imported.

    Their folder is also byte-identical to this process's build: weights and BPE training do not depend on the
    process (hash seeds, thread pools).
    """
    gate = tmp_path / "gate"
    gate.mkdir()
    env = {**os.environ, "COGLENS_CACHE": str(cache_dir)}
    racers = [
        subprocess.Popen([sys.executable, "-c", _RACER, str(gate)], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    deadline = time.monotonic() + 60
    while len(list(gate.glob("ready-*"))) < len(racers) and time.monotonic() < deadline:
        time.sleep(0.01)
    (gate / "go").touch()
    outputs = [r.communicate(timeout=60)[0].strip() for r in racers]
    assert [r.returncode for r in racers] == [0, 0]
    target = cache_dir / "tiny" / f"cogvlm-v{TINY_FORMAT_VERSION}"
    assert set(outputs) == {str(target)}
    assert _folder_bytes(target) == _folder_bytes(tiny_dirs["cogvlm"])
    assert [p.name for p in target.parent.iterdir()] == [target.name]
