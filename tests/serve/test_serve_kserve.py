"""The KServe v2 protocol with the official tritonclient.http client, and model names that contain ``/``."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from openai import OpenAI
from serve_helpers import API_KEY, Server, greedy, run_server
from tritonclient.utils import InferenceServerException

from coglens.serve.settings import ServeSettings

SLASHED = "THUDM/cogvlm2-llama3-chat-19B"


@pytest.fixture(scope="module")
def client(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"))


@pytest.fixture(scope="module")
def slashed() -> Iterator[Server]:
    """A server whose served model name has a slash, as THUDM's hub ids do (no API key)."""
    with run_server(ServeSettings(model="tiny:cogvlm2", device="cpu", served_model_names=(SLASHED,))) as running:
        yield running


def _auth(server) -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def _text_input(text: str, *, binary: bool = False) -> triton.InferInput:
    tensor = triton.InferInput("text_input", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([text.encode()], dtype=object), binary_data=binary)
    return tensor


def test_health_and_metadata(client, server):
    assert client.is_server_live() and client.is_server_ready()  # probes need no key
    headers = _auth(server)
    assert client.is_model_ready("tiny:cogvlm2", headers=headers)
    assert client.is_model_ready("cogvlm2", model_version="1", headers=headers)
    assert not client.is_model_ready("llama", headers=headers)
    assert not client.is_model_ready("cogvlm2", model_version="2", headers=headers)
    metadata = client.get_model_metadata("tiny:cogvlm2", headers=headers)
    assert metadata["name"] == "tiny:cogvlm2" and metadata["versions"] == ["1"]
    assert {"name": "text_input", "datatype": "BYTES", "shape": [1]} in metadata["inputs"]
    assert metadata["outputs"] == [{"name": "text_output", "datatype": "BYTES", "shape": [1]}]
    assert client.get_server_metadata(headers=headers)["name"] == "coglens"
    config = client.get_model_config("tiny:cogvlm2", headers=headers)
    assert config["name"] == "tiny:cogvlm2" and config["output"][0]["name"] == "text_output"
    assert {"name": "text_input", "data_type": "TYPE_STRING", "dims": [1], "optional": False} in config["input"]


def test_infer_with_json_tensors_equals_the_engine(client, server, tiny_pipeline):
    max_tokens = triton.InferInput("max_tokens", [1], "INT32")
    max_tokens.set_data_from_numpy(np.array([6], dtype=np.int32), binary_data=False)
    result = client.infer("tiny:cogvlm2", [_text_input("Describe the scene."), max_tokens],
                          outputs=[triton.InferRequestedOutput("text_output", binary_data=False)],
                          request_id="r-1", headers=_auth(server))
    text = result.as_numpy("text_output")[0]
    assert (text.decode() if isinstance(text, bytes) else text) == greedy(tiny_pipeline, "Describe the scene.", 6)
    assert result.get_response()["id"] == "r-1"


def test_infer_with_sampling_parameters_in_the_request(client, server):
    result = client.infer("tiny:cogvlm2", [_text_input("Hi")], model_version="1", headers=_auth(server),
                          outputs=[triton.InferRequestedOutput("text_output", binary_data=False)],
                          parameters={"max_new_tokens": 3, "do_sample": True, "seed": 4, "temperature": 0.8})
    assert len(result.as_numpy("text_output")) == 1


def test_binary_tensors_are_refused_with_a_clear_400(client, server):
    with pytest.raises(InferenceServerException, match="binary_data=False"):
        client.infer("tiny:cogvlm2", [_text_input("Hi", binary=True)], headers=_auth(server))


@pytest.mark.parametrize(("inputs", "words"), [
    ([{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["x"]}], "unknown input 'prompt'"),
    ([{"name": "text_input", "shape": [2], "datatype": "BYTES", "data": ["x", "y"]}], "one element"),
    ([{"name": "text_input", "shape": [1], "datatype": "INT32", "data": [1]}], "must be BYTES"),
    ([{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["x"]},
      {"name": "max_tokens", "shape": [1], "datatype": "INT32", "data": [True]}], "an integer"),
    ([{"name": "max_tokens", "shape": [1], "datatype": "INT32", "data": [3]}], "text_input tensor"),
])
def test_bad_tensors_name_what_is_wrong(server, inputs, words):
    response = httpx.post(f"{server.url}/v2/models/cogvlm2/infer", json={"inputs": inputs}, headers=_auth(server))
    assert response.status_code == 400
    assert words in response.json()["error"]


def test_a_slashed_model_name_works_in_every_route(slashed, tiny_pipeline):
    expected = greedy(tiny_pipeline, "Hello", 4)
    openai = OpenAI(base_url=f"{slashed.url}/v1", api_key="unused", max_retries=0)
    assert openai.models.retrieve(SLASHED).id == SLASHED
    chat = openai.chat.completions.create(model=SLASHED, messages=[{"role": "user", "content": "Hello"}],
                                          max_tokens=4, temperature=0)
    assert chat.choices[0].message.content == expected
    assert chat.model == SLASHED

    client = triton.InferenceServerClient(slashed.url.removeprefix("http://"))
    assert client.is_model_ready(SLASHED) and client.get_model_metadata(SLASHED)["name"] == SLASHED
    result = client.infer(SLASHED, [_text_input("Hello")], parameters={"max_new_tokens": 4},
                          outputs=[triton.InferRequestedOutput("text_output", binary_data=False)])
    assert result.as_numpy("text_output")[0] in (expected, expected.encode())
    for path in (f"/v2/models/{SLASHED}/generate", f"/v2/models/{SLASHED}/versions/1/generate"):
        answer = httpx.post(slashed.url + path, json={"text_input": "Hello", "parameters": {"max_new_tokens": 4}})
        assert answer.status_code == 200, answer.text
        assert answer.json()["text_output"] == expected and answer.json()["model_name"] == SLASHED
    missing = httpx.post(f"{slashed.url}/v2/models/THUDM/other/generate", json={"text_input": "Hello"})
    assert missing.status_code == 404 and "THUDM/other" in missing.json()["error"]
