"""`coglens extract` against what users' files, disks, signals and neighbours do: a broken image is skipped, a full
disk, SIGINT and SIGTERM stop the run with one line that says what is kept, a second writer of the same run is
refused (other runs of the file wait for SQLite's lock), and no database password is ever stored or shown."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from lens_run_helpers import EXAMPLES, REPO, write_manifest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from testkit import default_sigint, run_cli

import coglens.lens
from coglens.lens.run.config import load_lens_config
from coglens.lens.run.runner import run_lens

# b"\x89PNG\r\n\x1a\n" + random bytes: seed 344 makes Pillow raise a bare OSError ("Truncated File Read") while
# opening, seed 0 an UnidentifiedImageError
GARBAGE_SEEDS = {"bad.png": 344, "noise.png": 0}


def _garbage_png(seed: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + random.Random(seed).randbytes(64)


def test_garbage_png_is_skipped_and_listed_and_a_rerun_resumes(tmp_path, make_config, tiny_pipeline):
    folder = tmp_path / "images"
    folder.mkdir()
    for image in sorted(EXAMPLES.iterdir())[:2]:
        (folder / image.name).write_bytes(image.read_bytes())
    for name, seed in GARBAGE_SEEDS.items():
        (folder / name).write_bytes(_garbage_png(seed))
    config = make_config(input_dir=str(folder), prompt="What is it?", modules=["lm_head"], batch_size=2)

    first = run_lens(config, pipeline=tiny_pipeline, show_progress=False)
    assert sorted(f.key for f in first.failures) == sorted(GARBAGE_SEEDS)
    assert all(f.reason for f in first.failures)
    assert (first.samples_written, first.samples_total) == (2, 4)

    again = run_lens(config, pipeline=tiny_pipeline, show_progress=False)  # never stops at the broken files
    assert (again.samples_resumed, again.samples_written) == (2, 0)
    assert sorted(f.key for f in again.failures) == sorted(GARBAGE_SEEDS)
    with coglens.lens.open(tmp_path / "lens.db") as db:
        assert db.runs()[["status", "num_samples"]].values.tolist() == [["finished", 2]]


def _prompt_rows(count: int) -> list[dict[str, str]]:
    return [{"id": f"s{i:03d}", "prompt": f"Sample number {i}."} for i in range(count)]


def _config_file(tmp_path: Path, count: int, **settings) -> Path:
    values = {
        "model_path": "tiny:cogvlm2",
        "manifest": str(write_manifest(tmp_path / "rows.jsonl", _prompt_rows(count))),
        "modules": ["lm_head", r"model\.layers\.\d+"],
        "tokens": "last",
        "batch_size": 1,
        "output": str(tmp_path / "lens.db"),
        **settings,
    }
    path = tmp_path / "lens.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _status_and_count(db: Path, run: str = "lens") -> tuple[str, int]:
    with sqlite3.connect(db, timeout=30) as conn:
        status, run_id = conn.execute("SELECT status, id FROM runs WHERE name = ?", (run,)).fetchone()
        return status, conn.execute("SELECT COUNT(*) FROM samples WHERE run_id = ?", (run_id,)).fetchone()[0]


def test_a_full_database_stops_with_one_line_keeping_what_was_written(tmp_path, tiny_pipeline):
    config_file = _config_file(tmp_path, 200, batch_size=4)
    db = tmp_path / "lens.db"

    def limit_size(dbapi_connection, _record) -> None:  # SQLite's own limit: a real SQLITE_FULL when reached
        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.execute("PRAGMA max_page_count = 40")

    event.listen(Engine, "connect", limit_size)
    try:
        out = run_cli("extract", "--config", str(config_file), "--quiet", "--run-name", "lens")
    finally:
        event.remove(Engine, "connect", limit_size)
    assert out.returncode == 1, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr
    status, stored = _status_and_count(db)
    assert 0 < stored < 200
    assert f"is full. {stored} of 200 samples of run 'lens' are stored in {db}" in errors[0]
    assert "free some space, then rerun the same command to resume" in errors[0]
    assert status == "failed"

    summary = run_lens(load_lens_config(config_file), pipeline=tiny_pipeline, show_progress=False)
    assert (summary.samples_resumed, summary.samples_written) == (stored, 200 - stored)
    assert _status_and_count(db) == ("finished", 200)


def _start_extract(config_file: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "coglens.lens", "--config", str(config_file), "--quiet", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
        preexec_fn=default_sigint,
    )


def _wait_for_samples(db: Path, process: subprocess.Popen, at_least: int, run: str = "lens") -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if db.exists() and _status_and_count(db, run)[1] >= at_least:
                return
        except (sqlite3.OperationalError, TypeError):  # no tables or no run yet
            pass
        time.sleep(0.02)
    raise AssertionError(f"the run wrote fewer than {at_least} samples (exit code {process.poll()})")


@pytest.mark.parametrize(("signum", "name"), [(signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")])
def test_a_signal_marks_the_run_interrupted_and_says_how_to_resume(tmp_path, tiny_pipeline, signum, name):
    config_file = _config_file(tmp_path, 150)
    db = tmp_path / "lens.db"
    process = _start_extract(config_file)
    try:
        _wait_for_samples(db, process, at_least=5)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signum, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    status, stored = _status_and_count(db)
    assert status == "interrupted" and 5 <= stored < 150
    assert errors[0] == (
        f"error: interrupted by {name}{' (Ctrl-C)' if signum == signal.SIGINT else ''}: {stored} of 150 samples "
        f"of run 'lens' are stored in {db}, each complete; rerun the same command to resume"
    )

    summary = run_lens(load_lens_config(config_file), pipeline=tiny_pipeline, show_progress=False)
    assert (summary.samples_resumed, summary.samples_written) == (stored, 150 - stored)
    assert _status_and_count(db) == ("finished", 150)


def test_a_second_process_on_the_same_sqlite_run_is_refused_and_the_first_goes_on(tmp_path):
    config_file = _config_file(tmp_path, 5000)  # long enough to outlive the second process
    db = tmp_path / "lens.db"
    first = _start_extract(config_file)
    try:
        _wait_for_samples(db, first, at_least=3)
        second = _start_extract(config_file)  # the same run: refused, the first run left alone
        _, stderr = second.communicate(timeout=120)
        assert second.returncode == 1, stderr
        assert stderr.count("error:") == 1 and "Traceback" not in stderr, stderr
        assert f"run 'lens' of {db} is being written by another process right now" in stderr
        assert _status_and_count(db)[0] == "running"
        assert first.poll() is None, "the first run must still be writing"
        before = _status_and_count(db)[1]
        _wait_for_samples(db, first, at_least=before + 3)  # and it goes on writing
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 128 + signal.SIGINT
    assert _status_and_count(db)[0] == "interrupted"


def test_a_database_password_is_never_stored_nor_shown(tmp_path, pg_url):
    from coglens.lens.store.connection import without_password

    password = "s3cret-Pw-4711"  # the test server trusts local connections: any password connects
    url = make_url(pg_url)._replace(password=password).render_as_string(hide_password=False)
    config_file = _config_file(tmp_path, 2, output=url)
    out = run_cli("extract", "--config", str(config_file), "--quiet")
    assert out.returncode == 0, out.stderr
    assert password not in out.stdout + out.stderr
    assert "***" in out.stdout or without_password(url) in out.stdout
    sql_engine = create_engine(pg_url)
    try:
        with sql_engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM runs")).mappings().all()
    finally:
        sql_engine.dispose()
    assert len(rows) == 1
    stored = " ".join(str(value) for value in rows[0].values())
    assert password not in stored and make_url(pg_url).host in stored  # the URL is kept, without the password


def test_urls_are_shown_and_stored_without_credentials():
    from coglens.lens.store.connection import without_password

    assert without_password("postgresql+psycopg://bob:pw1@db:5432/lens?password=pw2&sslmode=require") == (
        "postgresql+psycopg://bob@db:5432/lens?sslmode=require"
    )
    assert without_password("sqlite://user:pw1@/lens.db") == "sqlite://user@/lens.db"
    assert without_password("output/lens.db") == "output/lens.db"
    with pytest.raises(coglens.lens.LensStoreError) as caught:
        coglens.lens.open("postgresql+psycopg://bob:pw1@db:notaport/lens")
    assert "pw1" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("lens.yaml", b"model_path: caf\xe9\n", "lens config {path} is not UTF-8 text (invalid continuation byte"),
        ("given.jsonl", b'{"prompt": "caf\xe9"}\n', "manifest '{path}' is not UTF-8 text (invalid continuation byte"),
        ("given.csv", b'prompt\n"' + b"x" * 200_000 + b'"\n', "manifest '{path}' is not a readable CSV file: field"),
    ],
)
def test_unreadable_config_and_manifest_files_give_one_line(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    source = ["--config", str(path)] if name.endswith(".yaml") else ["--config", str(_config_file(tmp_path, 1))]
    manifest = [] if name.endswith(".yaml") else ["--manifest", str(path)]
    out = run_cli("extract", *source, *manifest, "--quiet")
    assert out.returncode == 1
    assert out.stderr.startswith("error: " + expected.format(path=path)), out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
