"""An extraction killed with SIGKILL mid-run leaves only complete samples, and a rerun finishes it: the final
database holds exactly the rows of a clean run, none twice."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import torch
import yaml
from lens_run_helpers import EXAMPLES, REPO, assert_same_rows, stored_rows, write_manifest

import coglens.lens
from coglens.lens.run.config import load_lens_config
from coglens.lens.run.runner import run_lens

SAMPLES = 400  # batch size 1: slow enough to be killed part-way, fast enough to finish in seconds
IMAGE_EVERY = 25


def _stored_counts(db) -> tuple[int, dict[str, int]]:
    """(samples stored, activations per stored sample), read while (or after) the run writes."""
    with sqlite3.connect(db, timeout=30) as conn:  # read-write: after a kill it recovers the WAL index
        per_sample = dict(
            conn.execute(
                "SELECT s.sample_key, COUNT(a.id) FROM samples s "
                "LEFT JOIN activations a ON a.sample_id = s.id GROUP BY s.id"
            ).fetchall()
        )
    return len(per_sample), per_sample


def _wait_for_samples(db, process: subprocess.Popen, at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if not db.exists():  # connecting would create it
            time.sleep(0.01)
            continue
        try:
            if _stored_counts(db)[0] >= at_least:
                return
        except sqlite3.OperationalError:  # the file or its tables are not there yet
            pass
        time.sleep(0.01)
    raise AssertionError(f"the run wrote fewer than {at_least} samples (exit code {process.poll()})")


def test_sigkill_mid_run_then_resume_equals_a_clean_run(tmp_path, tiny_pipeline):
    images = sorted(EXAMPLES.iterdir())
    rows = [
        {
            "id": f"s{i:03d}",
            "prompt": f"Sample number {i}.",
            **({"image": str(images[i // IMAGE_EVERY % len(images)])} if i % IMAGE_EVERY == 0 else {}),
        }
        for i in range(SAMPLES)
    ]
    settings = {
        "model_path": "tiny:cogvlm2",
        "manifest": str(write_manifest(tmp_path / "rows.jsonl", rows)),
        "modules": [r"model\.layers\.\d+", "lm_head", "model.vision"],
        "tokens": "last",
        "batch_size": 1,
        "output": str(tmp_path / "killed.db"),
    }
    config_file = tmp_path / "lens.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    process = subprocess.Popen(
        [sys.executable, "-m", "coglens.lens", "--config", str(config_file), "--quiet"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},  # same sums as in here
    )
    try:
        _wait_for_samples(tmp_path / "killed.db", process, at_least=IMAGE_EVERY + 5)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL

    stored, per_sample = _stored_counts(tmp_path / "killed.db")
    assert IMAGE_EVERY < stored < SAMPLES, "the kill must land part-way"
    for key, count in per_sample.items():  # no half-written sample: each has all its activations
        has_image = int(key[1:]) % IMAGE_EVERY == 0
        assert count == (4 if has_image else 3), key
    with coglens.lens.open(tmp_path / "killed.db") as db:
        assert db.runs()["status"].tolist() == ["running"]  # nobody marked the killed run

    config = load_lens_config(config_file)
    summary = run_lens(config, pipeline=tiny_pipeline, default_run_name="lens", show_progress=False)
    assert (summary.samples_resumed, summary.samples_written) == (stored, SAMPLES - stored)
    clean = load_lens_config(config_file, {"output": str(tmp_path / "clean.db")})
    run_lens(clean, pipeline=tiny_pipeline, default_run_name="lens", show_progress=False)
    assert_same_rows(stored_rows(tmp_path / "killed.db"), stored_rows(tmp_path / "clean.db"))
    with coglens.lens.open(tmp_path / "killed.db") as db:
        runs = db.runs()
        assert runs[["status", "num_samples"]].values.tolist() == [["finished", SAMPLES]]
