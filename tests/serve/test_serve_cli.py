"""``coglens serve``: flags become settings and limits; uvicorn gets the app (patched here, not started)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from coglens.cli.serve import serve
from coglens.pipeline import Pipeline
from coglens.serve.settings import ServeSettings

app = typer.Typer()
app.command()(serve)


@pytest.fixture()
def launched(monkeypatch) -> dict:
    calls: dict = {}
    monkeypatch.setattr("uvicorn.run", lambda application, **kwargs: calls.update(app=application, **kwargs))
    yield calls
    logging.getLogger("coglens.serve.access").handlers.clear()


def test_flags_reach_the_settings(launched, tmp_path: Path, monkeypatch):
    from coglens.engine import Engine

    warmed = []  # the warm-up's compilation itself is tested in tests/engine/test_static_decode.py
    monkeypatch.setattr(Engine, "warm_up", lambda self: warmed.append(self))
    result = CliRunner().invoke(app, [
        "--port", "9001", "--api-key", "k", "--max-batch-size", "4", "--allow-local-media", str(tmp_path),
        "--allow-remote-media", "--cors-origin", "https://a.example", "--max-body-mb", "1", "--max-queue", "5",
        "--max-video-seconds", "12", "--request-timeout", "30", "--served-model-name", "cogvlm2",
        "--served-model-name", "cogvlm2_llama3_video"])
    assert result.exit_code == 0, result.output
    settings = launched["app"].state.settings
    assert launched["port"] == 9001 and launched["host"] == "127.0.0.1" and launched["access_log"] is False
    assert settings.model == "tiny:cogvlm2" and settings.api_key == "k" and settings.allow_remote_media
    assert settings.allow_local_media == tmp_path and settings.cors_origins == ("https://a.example",)
    assert settings.limits.max_body_bytes == 1 << 20 and settings.limits.max_queue == 5
    assert settings.limits.max_video_seconds == 12 and settings.limits.request_timeout_s == 30
    engine = launched["app"].state.pipeline.engine
    assert engine.max_batch_size == 4
    # compiled by default on the CPU, and warmed up before serving; the warm-up is not counted as traffic
    assert engine.decode_step.compiled and warmed == [engine] and engine.stats.decode_steps == 0
    assert settings.served_model_names == ("cogvlm2", "cogvlm2_llama3_video")


@pytest.mark.parametrize(("args", "words"), [
    (["--allow-local-media", "/no/such/dir"], "not a directory"),
    (["--max-queue", "0"], "--max-queue must be > 0"),
    (["--api-key", " "], "--api-key is empty"),
    (["--log-level", "loud"], "not a level"),
])
def test_bad_flags_are_clear_errors(launched, args, words):
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0 and "app" not in launched
    assert isinstance(result.exception, ValueError) and words in str(result.exception)


def test_quantize_serves_the_quantized_model_to_an_openai_client(launched):
    from openai import OpenAI
    from serve_helpers import greedy, run_server

    result = CliRunner().invoke(app, ["--quantize", "int8", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    state = launched["app"].state
    assert (state.settings.quantize, state.settings.quantize_vision) == ("int8", False)
    reference = Pipeline.load("tiny:cogvlm2", device="cpu", quantize="int8")  # loaded apart, the same way
    layer = "model.layers.0.mlp.language_mlp.up_proj"
    served, expected = state.pipeline.model.get_submodule(layer), reference.model.get_submodule(layer)
    assert (type(served), served.weight.dtype) == (type(expected), expected.weight.dtype)
    with run_server(state.settings, pipeline=state.pipeline) as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        response = client.chat.completions.create(
            model="tiny:cogvlm2", messages=[{"role": "user", "content": "Describe the scene."}], max_tokens=6,
            temperature=0)
    assert response.choices[0].message.content == greedy(reference, "Describe the scene.", 6)


def test_quantize_settings_are_checked():
    with pytest.raises(ValueError, match="--quantize 'int3' is not one of int8, int4, nf4, fp4"):
        ServeSettings(quantize="int3")
    with pytest.raises(ValueError, match="--quantize-vision needs --quantize"):
        ServeSettings(quantize_vision=True)


def test_adapter_flags_load_every_adapter_beside_the_model(launched, tmp_path):
    from lora_kit import save_lora

    alpha, beta = save_lora(tmp_path / "a", seed=0), save_lora(tmp_path / "b", seed=1)
    result = CliRunner().invoke(app, ["--adapter", f"alpha={alpha}", "--adapter", f"team/beta={beta}"])
    assert result.exit_code == 0, result.output
    assert launched["app"].state.settings.adapters == {"alpha": alpha, "team/beta": beta}
    assert launched["app"].state.pipeline.engine.adapters.names == ("alpha", "team/beta")

    for args, words in ((["--adapter", str(alpha)], "give NAME=PATH"),
                        (["--adapter", f"alpha={tmp_path / 'none'}"], "does not exist"),
                        (["--adapter", f"a b={alpha}"], "is not usable"),
                        (["--adapter", f"x={alpha}", "--adapter", f"x={beta}"], "given twice"),
                        (["--adapter", f"cogvlm2={alpha}"], "'cogvlm2' is also a name of the served model")):
        launched.clear()
        result = CliRunner().invoke(app, args)
        assert "app" not in launched
        assert isinstance(result.exception, ValueError) and words in str(result.exception), result.output
