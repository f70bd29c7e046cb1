"""``serve --adapter NAME=PATH``: every protocol's official client picks an adapter, requests for different adapters
and the base model share decode steps, and each answer is the one the merged adapter gives (peft's merge)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from huggingface_hub import InferenceClient
from lora_kit import save_lora
from openai import BadRequestError, NotFoundError, OpenAI
from serve_helpers import IMAGE, Server, data_url, greedy, run_server

from coglens.pipeline import Pipeline
from coglens.serve.settings import ServeSettings

NAMES = ("alpha", "beta")
TOKENS = 8


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("served-adapters")
    return {name: save_lora(folder / name, seed=seed) for seed, name in enumerate(NAMES)}


@pytest.fixture(scope="module")
def merged(adapters) -> dict[str | None, Pipeline]:
    """The reference answers: each adapter merged into its own model (and the base model as None)."""
    pipes: dict[str | None, Pipeline] = {name: Pipeline.load("tiny:cogvlm2", adapter=path, device="cpu")
                                         for name, path in adapters.items()}
    pipes[None] = Pipeline.load("tiny:cogvlm2", device="cpu")
    return pipes


@pytest.fixture(scope="module")
def lora_server(adapters) -> Iterator[Server]:
    with run_server(ServeSettings(model="tiny:cogvlm2", device="cpu", adapters=adapters, max_batch_size=16)) as server:
        yield server


@pytest.fixture(scope="module")
def openai(lora_server) -> OpenAI:
    return OpenAI(base_url=f"{lora_server.url}/v1", api_key="unused", max_retries=0)


def _image_message(text: str) -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(IMAGE.read_bytes(), "image/png")}},
        {"type": "text", "text": text}]}]


def _chat(openai: OpenAI, model: str, text: str, *, image: bool = True, **extra) -> str:
    messages = _image_message(text) if image else [{"role": "user", "content": text}]
    response = openai.chat.completions.create(model=model, messages=messages, max_tokens=TOKENS, temperature=0,
                                              extra_body=extra or None)
    return response.choices[0].message.content or ""


def test_models_lists_the_adapters_under_their_base_model(openai):
    cards = {card.id: card for card in openai.models.list()}
    assert set(NAMES) <= set(cards) and "tiny:cogvlm2" in cards
    assert cards["alpha"].model_extra["parent"] == "tiny:cogvlm2" == cards["beta"].model_extra["parent"]
    assert cards["tiny:cogvlm2"].model_extra["parent"] is None
    assert openai.models.retrieve("beta").id == "beta"


def test_openai_picks_the_adapter_by_model_or_adapter_id(openai, merged):
    for name in NAMES:
        expected = greedy(merged[name], "What is it?", TOKENS, images=[str(IMAGE)])
        assert _chat(openai, name, "What is it?") == expected
        assert _chat(openai, "tiny:cogvlm2", "What is it?", adapter_id=name) == expected
        assert expected != greedy(merged[None], "What is it?", TOKENS, images=[str(IMAGE)])
    assert _chat(openai, "tiny:cogvlm2", "Hello", image=False) == greedy(merged[None], "Hello", TOKENS)
    completion = openai.completions.create(model="beta", prompt="Once upon a time", max_tokens=TOKENS, temperature=0)
    assert completion.model == "beta"
    assert completion.choices[0].text == greedy(merged["beta"], "Once upon a time", TOKENS, template="base")


def test_tgi_triton_and_vllm_bodies_pick_the_adapter(lora_server, merged):
    url = lora_server.url
    tgi = InferenceClient(model=url, provider="hf-inference")
    assert tgi.text_generation("Hello", max_new_tokens=TOKENS, adapter_id="alpha") == greedy(
        merged["alpha"], "Hello", TOKENS)

    kserve = triton.InferenceServerClient(url.removeprefix("http://"))
    text_input = triton.InferInput("text_input", [1], "BYTES")
    text_input.set_data_from_numpy(np.array([b"Hello"], dtype=object), binary_data=False)
    result = kserve.infer("tiny:cogvlm2", [text_input], parameters={"adapter_id": "beta", "max_new_tokens": TOKENS},
                          outputs=[triton.InferRequestedOutput("text_output", binary_data=False)])
    text = result.as_numpy("text_output")[0]
    assert (text.decode() if isinstance(text, bytes) else text) == greedy(merged["beta"], "Hello", TOKENS)

    # Triton's generate with the adapter's name in the URL path, and vLLM's /generate with it as model
    body = {"text_input": "Hello", "parameters": {"max_new_tokens": TOKENS}}
    answer = httpx.post(f"{url}/v2/models/alpha/generate", json=body, timeout=60).json()
    assert answer["text_output"] == greedy(merged["alpha"], "Hello", TOKENS) and answer["model_name"] == "alpha"
    answer = httpx.post(f"{url}/generate", json={"prompt": "Hello", "max_tokens": TOKENS, "temperature": 0,
                                                 "model": "beta"}, timeout=60).json()
    assert answer == {"text": ["Hello" + greedy(merged["beta"], "Hello", TOKENS)]}


def test_adapters_and_the_base_model_decode_in_one_batch_as_each_would_alone(lora_server, openai, merged):
    """Twelve requests at once (two adapters and the base model, with and without an image) share decode steps,
    and each answer equals the same request served alone and the merged adapter's answer."""
    jobs = [(model, text, image) for model in (*NAMES, "tiny:cogvlm2") for text in ("What is it?", "Describe it.")
            for image in (True, False)]
    alone = [_chat(openai, model, text, image=image) for model, text, image in jobs]

    def metric() -> float:
        for line in httpx.get(f"{lora_server.url}/metrics").text.splitlines():
            if line.startswith("coglens_engine_mixed_adapter_steps_total "):
                return float(line.split()[1])
        raise AssertionError("no mixed_adapter_steps metric")

    before = metric()
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda job: _chat(openai, job[0], job[1], image=job[2]), jobs))
    assert together == alone
    assert metric() > before  # rows of different adapters were decoded by the same forward passes
    for (model, text, image), answer in zip(jobs, together, strict=True):
        reference = merged[None if model == "tiny:cogvlm2" else model]
        assert answer == greedy(reference, text, TOKENS, images=[str(IMAGE)] if image else None)


def test_unknown_or_conflicting_adapters_are_4xx_naming_the_loaded_ones(lora_server, openai):
    with pytest.raises(NotFoundError, match="adapter_id='gamma' is not a loaded adapter; the loaded adapters are "
                                            "'alpha', 'beta'"):
        _chat(openai, "tiny:cogvlm2", "Hi", image=False, adapter_id="gamma")
    with pytest.raises(NotFoundError, match="model 'gamma' is not served here; .*'alpha', 'beta'"):
        _chat(openai, "gamma", "Hi", image=False)
    with pytest.raises(BadRequestError, match="name two different adapters"):
        _chat(openai, "alpha", "Hi", image=False, adapter_id="beta")
    response = httpx.post(f"{lora_server.url}/generate", content=json.dumps(
        {"inputs": "Hi", "parameters": {"adapter_id": "gamma"}}))
    assert response.status_code == 404 and "'alpha', 'beta'" in response.json()["error"]
    response = httpx.post(f"{lora_server.url}/v2/models/gamma/generate", json={"text_input": "Hi"})
    assert response.status_code == 404 and "'alpha', 'beta'" in response.json()["error"]

