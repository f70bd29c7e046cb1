"""``--adapter`` on the commands and ``adapter:`` in lens configs: they run the adapted model and say which adapter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from lora_kit import save_lora
from testkit import run_cli

import coglens.lens

EXAMPLES = Path(__file__).resolve().parents[2] / "examples/images"
MODULE = "model.layers.1.mlp.language_mlp.down_proj"  # after adapted modules of both layers


def test_ask_with_an_adapter_answers_as_the_adapted_pipeline(adapted_pipeline, lora_adapter, tiny_pipeline):
    image = EXAMPLES / "red_circle.png"
    result = run_cli("ask", "What is it?", "--image", str(image), "--adapter", str(lora_adapter),
                     "--max-new-tokens", "8", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    expected = adapted_pipeline.ask("What is it?", images=[str(image)], params=_greedy(8)).text
    assert result.stdout == expected + "\n"
    assert expected != tiny_pipeline.ask("What is it?", images=[str(image)], params=_greedy(8)).text


def _greedy(tokens: int):
    from coglens.engine import SamplingParams

    return SamplingParams(max_new_tokens=tokens)


def _rows(db: Path) -> dict[str, np.ndarray]:
    with coglens.lens.open(db) as lens:
        arrays, meta = next(lens.iter_activations(MODULE, io="output", step=0, stack=False))
        settings = json.loads(lens.runs()["config"][0])
    return {"settings": settings, **dict(zip(meta["sample_key"], arrays, strict=True))}


def _extract(tmp_path: Path, name: str, **settings: object) -> Path:
    config = {"model_path": "tiny:cogvlm2", "input_dir": str(EXAMPLES), "prompt": "What shape is it?",
              "modules": [MODULE], "tokens": "last", "output": str(tmp_path / f"{name}.db"), **settings}
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
    out = run_cli("extract", "--config", str(tmp_path / f"{name}.yaml"), "--quiet")
    assert out.returncode == 0, out.stderr
    return tmp_path / f"{name}.db"


def test_lens_adapter_captures_the_merged_model_and_records_the_adapter(lora_adapter, tmp_path):
    from coglens.modeling.adapters import merge_adapter
    from coglens.pipeline import resolve_model_path

    merged = merge_adapter(resolve_model_path("tiny:cogvlm2"), lora_adapter, tmp_path / "merged")
    adapted = _rows(_extract(tmp_path, "adapted", adapter=str(lora_adapter)))
    expected = _rows(_extract(tmp_path, "merged", model_path=str(merged)))
    base = _rows(_extract(tmp_path, "base"))
    assert adapted["settings"]["adapter"] == str(lora_adapter.absolute())
    assert base["settings"]["adapter"] is None
    for key in sorted(k for k in adapted if k != "settings"):
        np.testing.assert_allclose(adapted[key], expected[key], atol=1e-5, rtol=1e-5)
        assert np.abs(adapted[key] - base[key]).max() > 1e-2

    # resuming the run with another adapter would mix two models' rows in one run: refused, naming the setting
    other = save_lora(tmp_path / "other", seed=1)
    config = yaml.safe_load((tmp_path / "adapted.yaml").read_text())
    (tmp_path / "adapted.yaml").write_text(yaml.safe_dump({**config, "adapter": str(other)}))
    again = run_cli("extract", "--config", str(tmp_path / "adapted.yaml"), "--quiet")
    assert again.returncode == 1 and f"adapter: '{lora_adapter}' -> '{other}'" in again.stderr, again.stderr


def test_lens_adapter_with_quantize_is_refused(lora_adapter, tmp_path):
    from coglens.lens.run.config import LensConfigError, load_lens_config

    with pytest.raises(LensConfigError, match="adapter: .*merge-adapter"):
        load_lens_config(None, {"model": "tiny:cogvlm2", "modules": ["lm_head"], "input_dir": str(EXAMPLES),
                                "prompt": "Hi", "adapter": str(lora_adapter), "quantize": "int8"})
