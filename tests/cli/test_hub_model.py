"""``--model`` takes a hub id, resolved through the Hugging Face cache as transformers does (offline here).

``coglens`` runs as a process of its own: huggingface_hub reads HF_HUB_OFFLINE and HF_HUB_CACHE when imported."""

from __future__ import annotations

import os
import subprocess

from hf_cache import hf_cache_layout
from testkit import coglens_command

from coglens.tiny import tiny_model_path


def test_ask_with_a_hub_id_from_the_offline_cache(tmp_path):
    cache = tmp_path / "hub"
    hf_cache_layout(cache, "THUDM/cogvlm2-llama3-chat-19B", tiny_model_path("cogvlm2"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    cli = [*coglens_command(), "ask", "--max-new-tokens", "3"]
    ok = subprocess.run([*cli, "--model", "THUDM/cogvlm2-llama3-chat-19B", "Hello"],
                        capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run([*cli, "--model", "THUDM/not-downloaded", "Hello"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert missing.returncode == 1
    assert "THUDM/not-downloaded" in missing.stderr and "HF_HUB_OFFLINE=1" in missing.stderr
    assert "Traceback" not in missing.stderr
