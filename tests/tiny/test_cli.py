"""``coglens tiny`` writes the folder, lists it, and turns user mistakes into usage errors."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from coglens.cli.tiny import tiny
from coglens.tiny.checkpoint import CHECKPOINT_FILES

app = typer.Typer()
app.command()(tiny)
app.command("noop")(lambda: None)  # a second command keeps "tiny" as a sub-command, as under the real root


def test_writes_and_lists_every_file(tmp_path, tiny_dirs):
    result = CliRunner().invoke(app, ["tiny", "cogvlm2", str(tmp_path / "out"), "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert f"tiny cogvlm2 checkpoint (seed 0, random weights) to {tmp_path / 'out'}" in result.output
    for name in CHECKPOINT_FILES:
        assert name in result.output
        assert (tmp_path / "out" / name).read_bytes() == (tiny_dirs["cogvlm2"] / name).read_bytes()


def test_seed_option_changes_the_weights(tmp_path, tiny_dirs):
    result = CliRunner().invoke(app, ["tiny", "cogvlm", str(tmp_path / "s7"), "--seed", "7"])
    assert result.exit_code == 0, result.output
    shard = "model-00001-of-00002.safetensors"
    assert (tmp_path / "s7" / shard).read_bytes() != (tiny_dirs["cogvlm"] / shard).read_bytes()


def test_unknown_variant_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(app, ["tiny", "cogagent", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "cogvlm2-video" in result.output
    assert not (tmp_path / "x").exists()


def test_foreign_folder_is_a_usage_error(tmp_path):
    (tmp_path / "report.pdf").write_bytes(b"%PDF")
    result = CliRunner().invoke(app, ["tiny", "cogvlm", str(tmp_path)])
    assert result.exit_code == 2
    assert "report.pdf" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["report.pdf"]
