"""`coglens extract`, `python -m coglens.lens` and `coglens modules` as users run them (in this process, through
their entry points: testkit.run_cli)."""

from __future__ import annotations

import re

import yaml
from lens_run_helpers import DEMO_CONFIG, REPO
from testkit import run_cli
from typer.testing import CliRunner

import coglens.lens
from coglens.cli.main import app
from coglens.lens.run.config import load_lens_config


def test_readme_command_prints_what_it_stored(tmp_path):
    db = tmp_path / "demo.db"
    out = run_cli("extract", "--config", str(DEMO_CONFIG), "--output", str(db), "--batch-size", "3", cwd=REPO)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for expected in (
        "lens run 'demo'",
        "samples │ 4 new of 4",
        "rows │ 16",
        "KiB of activations",
        "samples/s",
        "model.layers.0",
        "model.layers.1",
        "model.vision",
        "lm_head",
        "database │",
        "(coglens format)",
    ):
        assert expected in text, expected
    hint = re.search(r"read back: (coglens\.lens\.open\(.*\))", out.stdout).group(1)
    assert str(db) in hint
    values = eval(hint, {"coglens": coglens})[0]  # the hint is a working expression
    assert values.shape == (4, 1, 1024)
    assert "4/4" in out.stderr and "rows/s" in out.stderr  # the progress bar


def test_module_log_from_a_vlm_lens_config_through_python_m(tmp_path):
    config = yaml.safe_load(DEMO_CONFIG.read_text())
    (tmp_path / "log.yaml").write_text(yaml.safe_dump({**config, "log_named_modules": True}))
    out = run_cli("--config", "log.yaml", module="coglens.lens", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    names = (tmp_path / "logs/tiny-cogvlm2.txt").read_text().splitlines()
    assert names[0] == "" and "model.layers.0.mlp" in names and "model.vision.conv" in names  # root first
    assert not (tmp_path / "output").exists()  # listed, not extracted


def test_extract_errors_are_one_line_and_no_database(tmp_path):
    db = tmp_path / "x.db"
    out = run_cli("extract", "--config", str(DEMO_CONFIG), "-o", str(db), "-M", "model.layer.1", cwd=REPO)
    assert out.returncode == 1
    assert out.stderr.count("error:") == 1 and "'model.layer.1': closest names: model.layers.1" in out.stderr
    assert not db.exists()


def test_modules_lists_dry_run_outputs_and_writes_the_log(tmp_path, tiny_pipeline):
    result = CliRunner().invoke(
        app, ["modules", "--match", r"model\.layers\.1|model\.vision", "--log", "--logs-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 4}
    assert sorted(rows) == ["model.layers.1", "model.vision"]
    # bos, the image's 6 tokens (boi, 2x2 patches, eoi), then the chat template's text
    length = (
        1 + 6 + len(tiny_pipeline.tokenizer.encode("Question: Describe this image. Answer:", add_special_tokens=False))
    )
    assert "CogvlmDecoderLayer" in rows["model.layers.1"]
    hidden = tiny_pipeline.config.hidden_size
    assert f"Tensor[1, {length}, {hidden}] float32 │" in rows["model.layers.1"]
    assert "EVA2CLIPModel" in rows["model.vision"] and f"Tensor[1, 6, {hidden}] float32" in rows["model.vision"]
    logged = (tmp_path / "tiny-cogvlm2.txt").read_text().splitlines()
    assert len(logged) > 70 and "lm_head" in logged and f"wrote {len(logged)} module names" in result.output


def test_shipped_configs_load_without_warnings(caplog):
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert [c.stem for c in configs] == ["cogvlm-chat", "cogvlm-grounding", "cogvlm2-chat", "demo"]
    loaded = {}
    with caplog.at_level("WARNING"):
        for path in configs:
            loaded[path.stem] = load_lens_config(path)
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert loaded["cogvlm-chat"].model.template_version == "vqa"  # VLM-Lens's example, read as is
    grounding = loaded["cogvlm-grounding"]
    assert grounding.steps == "all" and grounding.forward["max_new_tokens"] == 64
    assert [e.path for e in loaded["cogvlm2-chat"].modules] == [None, "output[0]", None]
