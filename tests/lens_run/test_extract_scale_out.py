"""`torchrun --nproc_per_node 2 -m coglens.lens`: two CPU processes (gloo) split the samples and store the
same rows as one process, in per-rank SQLite shards (combined by `coglens merge`) or in one PostgreSQL
database."""

from __future__ import annotations

import sys

import pytest
import yaml
from lens_run_helpers import EXAMPLES, REPO, assert_same_rows, run_command, stored_rows, write_manifest

import coglens.lens
from coglens.lens.run.config import load_lens_config
from coglens.lens.run.runner import run_lens
from coglens.lens.store.merge import merge_databases

TOL = 1e-4  # ranks batch other samples together: padding differs, so float32 noise does too


def _config(tmp_path, output: str):
    rows = [
        {"id": f"img-{p.stem}", "image": str(p), "prompt": "What is it?"} for p in sorted(EXAMPLES.iterdir())
    ]
    rows += [{"id": f"text-{i}", "prompt": "Say something" + "!" * i} for i in range(5)]
    settings = {
        "model_path": "tiny:cogvlm2",
        "manifest": str(write_manifest(tmp_path / "rows.jsonl", rows)),
        "modules": [r"model\.layers\.\d+", "model.vision"],
        "tokens": "last",
        "batch_size": 2,
        "output": output,
    }
    path = tmp_path / "lens.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def _torchrun(config_path, *extra: str):
    return run_command(
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "coglens.lens",
        "--config",
        str(config_path),
        "--quiet",
        *extra,
        cwd=REPO,
    )


def _one_process_rows(tmp_path, tiny_pipeline, config_path):
    single = load_lens_config(config_path, {"output": str(tmp_path / "single.db")})
    run_lens(single, pipeline=tiny_pipeline, default_run_name="lens", show_progress=False)
    return stored_rows(tmp_path / "single.db")


def test_two_ranks_write_shards_that_merge_into_the_one_process_rows(tmp_path, tiny_pipeline):
    config_path = _config(tmp_path, str(tmp_path / "out.db"))
    out = _torchrun(config_path)
    assert out.returncode == 0, out.stderr[-3000:]
    shards = [tmp_path / "out.rank0.db", tmp_path / "out.rank1.db"]
    assert out.stdout.count("lens run 'lens'") == 1 and "9 new of 9" in out.stdout  # rank 0 sums up
    assert f"coglens merge MERGED.db {shards[0]} {shards[1]}" in " ".join(out.stdout.split())
    counts = [len(coglens.lens.open(shard).samples()) for shard in shards]
    assert counts == [5, 4]  # samples 0, 2, 4... on rank 0; 1, 3... on rank 1
    merge_databases([str(s) for s in shards], tmp_path / "merged.db")
    assert_same_rows(stored_rows(tmp_path / "merged.db"), _one_process_rows(tmp_path, tiny_pipeline, config_path), TOL)


@pytest.mark.postgres
def test_two_ranks_share_one_postgres_run(tmp_path, tiny_pipeline, pg_url):
    config_path = _config(tmp_path, pg_url)
    for extra in ((), ("--overwrite",)):  # a rerun with overwrite: rank 0 clears the run before rank 1 writes
        out = _torchrun(config_path, *extra)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "9 new of 9" in out.stdout
    with coglens.lens.open(pg_url) as db:
        assert db.runs()[["name", "status", "num_samples"]].values.tolist() == [["lens", "finished", 9]]
    assert_same_rows(stored_rows(pg_url), _one_process_rows(tmp_path, tiny_pipeline, config_path), TOL)
