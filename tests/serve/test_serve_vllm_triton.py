"""vLLM and Triton bodies over plain httpx, including the request bodies of the MindIE guide (seed 002)."""

from __future__ import annotations

import json

import httpx
from serve_helpers import IMAGE, data_url, greedy

from coglens.processing.image import load_image


def test_vllm_generate_returns_prompt_plus_greedy_answer(server, tiny_pipeline):
    body = {"prompt": "Describe the scene.", "max_tokens": 9, "temperature": 0, "model": "cogvlm2"}
    response = httpx.post(f"{server.url}/generate", json=body, headers=server.headers)
    assert response.json() == {"text": ["Describe the scene." + greedy(tiny_pipeline, "Describe the scene.", 9)]}


def test_vllm_seed_body_with_image_part(server, tiny_pipeline):
    # seed 002's vLLM body, with an image instead of a video (this server runs an image model)
    body = {"prompt": [{"type": "text", "text": "What is it?"}, {"type": "image_url", "image_url": "red.png"}],
            "max_tokens": 8, "repetition_penalty": 1, "presence_penalty": 0, "frequency_penalty": 0,
            "temperature": 0.6, "top_k": 1, "top_p": 0.9, "stream": False, "model": "cogvlm2"}
    response = httpx.post(f"{server.url}/generate", content=json.dumps(body), headers=server.headers)
    assert response.status_code == 200, response.text
    expected = greedy(tiny_pipeline, "What is it?", 8, images=[load_image(IMAGE)])  # top_k=1 sampling is greedy
    assert response.json()["text"] == ["What is it?" + expected]


def test_vllm_stream_is_cumulative_json_lines(server, tiny_pipeline):
    body = {"prompt": "Hello", "max_tokens": 6, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.url}/generate", json=body, headers=server.headers) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert len(lines) == 6
    texts = [line["text"][0] for line in lines]
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:], strict=False))
    assert texts[-1] == "Hello" + greedy(tiny_pipeline, "Hello", 6)


def test_triton_generate_and_stream_equal_the_engine(server, tiny_pipeline):
    expected = greedy(tiny_pipeline, "What is it?", 7, images=[load_image(IMAGE)])
    body = {"id": "a123", "text_input": [{"type": "text", "text": "What is it?"},
                                         {"type": "image_url", "image_url": {"url": data_url(IMAGE.read_bytes(),
                                                                                             "image/png")}}],
            "parameters": {"details": True, "do_sample": False, "max_new_tokens": 7, "batch_size": 100,
                           "typical_p": 0.5, "watermark": False, "perf_stat": False}}
    response = httpx.post(f"{server.url}/v2/models/tiny:cogvlm2/generate", json=body, headers=server.headers)
    answer = response.json()
    assert answer["text_output"] == expected
    assert answer["model_name"] == "tiny:cogvlm2" and answer["id"] == "a123"
    assert answer["details"]["generated_tokens"] == 7 and answer["details"]["finish_reason"] == "length"

    with httpx.stream("POST", f"{server.url}/v2/models/cogvlm2/generate_stream", json=body,
                      headers=server.headers) as stream:
        events = [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]
    assert "".join(e["text_output"] for e in events) == expected
    assert len(events) == 7 and events[-1]["details"]["generated_tokens"] == 7
    assert "details" not in events[0]


def test_triton_unknown_model_is_a_404_in_triton_shape(server):
    response = httpx.post(f"{server.url}/v2/models/llama/generate", json={"text_input": "hi"},
                          headers=server.headers)
    assert response.status_code == 404
    assert set(response.json()) == {"error"} and "llama" in response.json()["error"]
