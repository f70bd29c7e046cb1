"""User mistakes are 4xx answers in each protocol's own error shape, never a 500."""

from __future__ import annotations

import httpx
import pytest
from serve_helpers import greedy, run_server

from coglens.serve.settings import ServeSettings

OPENAI = "/v1/chat/completions"
TRITON = "/v2/models/tiny:cogvlm2/generate"
USER = {"role": "user", "content": "hi"}


def _post(server, path, body=None, content=None):
    return httpx.post(f"{server.url}{path}", json=body, content=content, headers=server.headers)


def _openai_error(response) -> dict:
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(("body", "status", "param", "words"), [
    ({"messages": []}, 400, "messages", "at least 1"),
    ({"messages": "hi"}, 400, "messages", "valid list"),
    ({"messages": [USER], "max_tokens": "many"}, 400, "max_tokens", "valid integer"),
    ({"messages": [USER], "temperature": 5}, 400, "temperature", "less than or equal to 2"),
    ({"messages": [USER], "model": "gpt-4"}, 404, "model", "not served"),
    ({"messages": [USER], "max_tokens": 10**6}, 400, "max_tokens", "at most"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, 400,
     "messages[0].content[0]", "input_audio"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role", "'user'"),
    ({"messages": [USER, {"role": "assistant", "content": "x"}]}, 400, "messages", "end with a user"),
    ({"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": "clip.mp4"}]}]}, 400,
     "messages[0].content[0]", "CogVLM2-Video"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                                                        "aGVsbG8="}}]}]},
     415, "messages[0].content[0]", "PNG, JPEG"),
    ({"messages": [USER], "n": 100}, 413, "n", "--max-n"),
    ({"messages": [USER], "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools",
     "tools"),
    ({"messages": [USER], "seed": 2**70}, 400, "seed", "64-bit"),
])
def test_openai_errors(server, body, status, param, words):
    response = _post(server, OPENAI, body)
    assert response.status_code == status, response.text
    error = _openai_error(response)
    assert error["param"] == param
    assert words in error["message"]


def test_a_vanishing_temperature_decodes_greedily_instead_of_failing(server, tiny_pipeline):
    body = {"messages": [USER], "temperature": 1e-45, "max_tokens": 5}
    response = _post(server, OPENAI, body)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == greedy(tiny_pipeline, "hi", 5)


def test_malformed_json_in_every_protocol(server):
    for path, shape in ((OPENAI, {"error"}), ("/generate", {"error", "error_type"}), (TRITON, {"error"}),
                        ("/generate_stream", {"error", "error_type"}), ("/", {"error", "error_type"})):
        response = _post(server, path, content=b'{"messages": [')
        assert 400 <= response.status_code < 500, (path, response.text)
        assert set(response.json()) == shape, path
        assert "not valid JSON" in str(response.json()["error"]), path


def test_tgi_errors_are_422_validation(server):
    response = _post(server, "/generate", {"inputs": "hi", "parameters": {"max_new_tokens": 0}})
    assert response.status_code == 422
    assert response.json()["error_type"] == "validation" and "max_new_tokens" in response.json()["error"]
    response = _post(server, "/generate", {"inputs": [{"type": "audio", "audio": "x"}]})
    assert response.status_code == 422 and "audio" in response.json()["error"]
    response = _post(server, "/generate", {"neither": 1})  # neither protocol's body: a plain 400
    assert response.status_code == 400 and "`inputs`" in response.json()["error"]


def test_vllm_errors_use_the_vllm_error_object(server):
    response = _post(server, "/generate", {"prompt": "hi", "max_tokens": -1})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "BadRequestError" and error["param"] == "max_tokens"


def test_triton_wrong_types(server):
    response = _post(server, TRITON, {"text_input": 5})
    assert response.status_code == 400 and "text_input" in response.json()["error"]
    response = _post(server, TRITON, {"text_input": "hi", "parameters": {"top_p": 2}})
    assert response.status_code == 400 and "top_p" in response.json()["error"]


def test_form_encoded_json_from_curl_is_accepted(server):
    # `curl -d '{...}'` (as in the MindIE guide) sends application/x-www-form-urlencoded
    headers = {**server.headers, "Content-Type": "application/x-www-form-urlencoded"}
    response = httpx.post(f"{server.url}{TRITON}", content=b'{"text_input": "hi", "parameters": {"max_new_tokens": 2}}',
                          headers=headers)
    assert response.status_code == 200 and "text_output" in response.json()


def test_auth_is_required_everywhere_but_health(server):
    for method, path in (("POST", OPENAI), ("POST", "/generate"), ("POST", TRITON), ("GET", "/v1/models"),
                         ("GET", "/metrics"), ("POST", "/generate_stream")):
        response = httpx.request(method, f"{server.url}{path}", json={}, headers={"Authorization": "Bearer wrong"})
        assert response.status_code == 401, path
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/docs").status_code == 200
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert {OPENAI, "/generate", "/generate_stream", "/v2/models/{model}/generate"} <= set(paths)


def test_cors_is_off_by_default_and_on_for_named_origins(server, tiny_pipeline):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in httpx.options(f"{server.url}{OPENAI}", headers=preflight).headers
    settings = ServeSettings(cors_origins=("https://app.example",))
    with run_server(settings, pipeline=tiny_pipeline) as cors_server:
        response = httpx.options(f"{cors_server.url}{OPENAI}", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://app.example"
