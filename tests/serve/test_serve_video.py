"""CogVLM2-Video through every protocol: video data URLs and local paths give the engine's greedy answer."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from lora_kit import save_lora
from openai import OpenAI
from serve_helpers import Server, data_url, greedy, run_server

from coglens.pipeline import Pipeline
from coglens.processing.video import load_video
from coglens.serve.limits import MIB, ServeLimits
from coglens.serve.settings import ServeSettings

QUESTION = "what is the general content of this video?"


def make_mp4(frames: int = 8, fps: int = 4, size: int = 32) -> bytes:
    """A tiny H.264 mp4 whose frames step through grey levels."""
    import av

    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for k in range(frames):
            pixels = np.full((size, size, 3), (20 + 25 * k) % 256, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return out.getvalue()


@pytest.fixture(scope="module")
def video() -> bytes:
    return make_mp4()


@pytest.fixture(scope="module")
def video_reference(tiny_pipelines) -> Pipeline:
    return tiny_pipelines("cogvlm2-video")


@pytest.fixture(scope="module")
def seed_adapters(tmp_path_factory) -> dict[str, Path]:
    """LoRA adapters under the names seed 002's bodies send as adapter_id."""
    folder = tmp_path_factory.mktemp("video-adapters")
    return {name: save_lora(folder / name, seed=seed, variant="cogvlm2-video")
            for seed, name in enumerate(("456", "aaaaaaaaaa"))}


@pytest.fixture(scope="module")
def video_server(tmp_path_factory, video, seed_adapters) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("videos")
    (folder / "video.mp4").write_bytes(video)
    limits = ServeLimits(max_video_seconds=30, max_video_bytes=MIB)
    settings = ServeSettings(model="tiny:cogvlm2-video", allow_local_media=folder, limits=limits,
                             adapters=seed_adapters)
    with run_server(settings) as server:
        yield server


def _expected(pipe: Pipeline, video: bytes, query: str, tokens: int, **inputs) -> str:
    frames = load_video(video, image_size=pipe.config.vision_config.image_size).frames
    return greedy(pipe, query, tokens, images=[frames], **inputs)


def test_openai_video_data_url_equals_the_engine(video_server, video_reference, video):
    client = OpenAI(base_url=f"{video_server.url}/v1", api_key="none", max_retries=0)
    content = [{"type": "video_url", "video_url": {"url": data_url(video, "video/mp4")}},
               {"type": "text", "text": QUESTION}]
    response = client.chat.completions.create(model="cogvlm2_llama3_video", temperature=0, max_tokens=10,
                                              messages=[{"role": "user", "content": content}])
    assert response.choices[0].message.content == _expected(video_reference, video, QUESTION, 10)
    inputs = video_reference.build_inputs(QUESTION, images=[load_video(video, image_size=56).frames])
    assert response.usage.prompt_tokens == inputs["input_ids"].numel()  # every frame's tokens counted


def test_seed_bodies_of_the_mindie_guide(video_server, video_reference, video, seed_adapters):
    """Seed 002's requests with the video path pointing into --allow-local-media and context-sized budgets."""
    expected = _expected(video_reference, video, QUESTION, 6)
    parts = [{"type": "text", "text": QUESTION}, {"type": "video_url", "video_url": "video.mp4"}]
    tgi = {"inputs": parts, "parameters": {"decoder_input_details": False, "details": False, "do_sample": False,
                                           "max_new_tokens": 6, "repetition_penalty": 1.0, "return_full_text": False,
                                           "seed": None, "truncate": None, "typical_p": 0.5, "watermark": False,
                                           "adapter_id": "456"}}
    # the guide's adapter answers: as the model with that adapter merged in, not as the base model
    adapted = Pipeline.load("tiny:cogvlm2-video", adapter=seed_adapters["456"], device="cpu")
    response = httpx.post(f"{video_server.url}/generate", content=json.dumps(tgi))
    assert response.json() == {"generated_text": _expected(adapted, video, QUESTION, 6), "details": None}
    assert response.json()["generated_text"] != expected
    tgi["parameters"]["adapter_id"] = "789"
    response = httpx.post(f"{video_server.url}/generate", content=json.dumps(tgi))
    assert response.status_code == 404 and "'456', 'aaaaaaaaaa'" in response.json()["error"]
    del tgi["parameters"]["adapter_id"]
    response = httpx.post(f"{video_server.url}/generate", content=json.dumps(tgi))
    assert response.json() == {"generated_text": expected, "details": None}

    vllm = {"prompt": parts, "max_tokens": 6, "repetition_penalty": 1, "presence_penalty": 0,
            "frequency_penalty": 0, "temperature": 0.6, "top_k": 1, "top_p": 0.9, "stream": False, "model": "cogvlm2"}
    response = httpx.post(f"{video_server.url}/generate", content=json.dumps(vllm))
    assert response.json() == {"text": [QUESTION + expected]}

    triton = {"id": "a123", "text_input": parts,
              "parameters": {"details": True, "do_sample": False, "max_new_tokens": 6, "repetition_penalty": 1.0,
                             "temperature": 0.6, "top_k": 10, "top_p": 0.9, "batch_size": 100, "typical_p": 0.5,
                             "watermark": False, "perf_stat": False}}
    with httpx.stream("POST", f"{video_server.url}/v2/models/cogvlm2_llama3_video/generate_stream",
                      content=json.dumps(triton)) as stream:
        events = [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]
    assert "".join(e["text_output"] for e in events) == expected and events[0]["id"] == "a123"


def test_seed_multi_turn_body_puts_the_system_text_before_the_query(video_server, video_reference, video,
                                                                    seed_adapters):
    answer = "The video showcases a variety of scenes."
    body = {"model": "cogvlm2_llama3_video", "max_tokens": 6, "temperature": 0.6, "top_p": 0.9, "top_k": 1,
            "do_sample": False, "stop": ["If"], "adapter_id": "aaaaaaaaaa", "presence_penalty": 1.0,
            "frequency_penalty": 1.0, "repetition_penalty": 1.0,
            "messages": [{"role": "user", "content": [{"type": "text", "text": QUESTION}]},
                         {"role": "system", "content": [{"type": "text", "text": answer}]},
                         {"role": "user", "content": [{"type": "video_url", "video_url": "video.mp4"},
                                                      {"type": "text", "text": "Please give me more detail."}]}]}
    adapted = httpx.post(f"{video_server.url}/v1/chat/completions", content=json.dumps(body))
    del body["adapter_id"]
    response = httpx.post(f"{video_server.url}/v1/chat/completions", content=json.dumps(body))
    assert response.status_code == adapted.status_code == 200, response.text
    from coglens.engine import SamplingParams

    frames = load_video(video, image_size=56).frames
    query = f"{answer}\n{QUESTION}\nPlease give me more detail."  # system first, the two user turns merged
    params = SamplingParams(max_new_tokens=6, presence_penalty=1.0, frequency_penalty=1.0, stop=["If"])
    assert response.json()["choices"][0]["message"]["content"] == video_reference.ask(
        query, images=[frames], params=params).text
    merged = Pipeline.load("tiny:cogvlm2-video", adapter=seed_adapters["aaaaaaaaaa"], device="cpu")
    assert adapted.json()["choices"][0]["message"]["content"] == merged.ask(query, images=[frames], params=params).text
    assert adapted.json()["model"] == "aaaaaaaaaa"


def test_video_errors(video_server, video):
    def ask(url: str) -> httpx.Response:
        content = [{"type": "video_url", "video_url": url}, {"type": "text", "text": "hi"}]
        return httpx.post(f"{video_server.url}/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": content}], "max_tokens": 2})

    long_video = make_mp4(frames=130, fps=4)  # 32.5 s > --max-video-seconds 30
    response = ask(data_url(long_video, "video/mp4"))
    assert response.status_code == 413 and "--max-video-seconds" in response.json()["error"]["message"]
    response = ask(data_url(b"#EXTM3U\nhttp://10.0.0.1/x.ts\n", "video/mp4"))  # a playlist FFmpeg would follow
    assert response.status_code == 415
    response = ask(data_url(video[:200], "video/mp4"))
    assert response.status_code == 400 and "messages[0].content[0]" in response.json()["error"]["message"]
    image = {"type": "image_url", "image_url": data_url(Path(__file__).parents[2].joinpath(
        "examples/images/red_circle.png").read_bytes(), "image/png")}
    response = httpx.post(f"{video_server.url}/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": [image]}], "max_tokens": 2})
    assert response.status_code == 400 and "video model" in response.json()["error"]["message"]


def _load_video(loader, url: str, budget=None):
    import asyncio

    from coglens.serve.messages import MediaRef

    return asyncio.run(loader.video(MediaRef("video", url, "messages[0].content[0]"), 56, budget=budget))


def test_video_frame_pixels_are_limited_from_the_header(video):
    from coglens.serve.errors import LimitExceededError
    from coglens.serve.media import MediaLoader

    loader = MediaLoader(ServeLimits(max_video_frame_pixels=32 * 32 - 1))
    with pytest.raises(LimitExceededError, match=r"frames are 1024 pixels each, over the server's limit of 1023 "
                                                  r"pixels \(raise it with --max-video-frame-pixels\)"):
        _load_video(loader, data_url(video, "video/mp4"))
    assert _load_video(MediaLoader(ServeLimits(max_video_frame_pixels=32 * 32)),
                       data_url(video, "video/mp4")).shape == (3, 3, 56, 56)


def test_video_sampled_frames_are_charged_to_the_request_budget(video):
    from coglens.serve.errors import LimitExceededError
    from coglens.serve.media import MediaLoader

    url = data_url(video, "video/mp4")  # 8 frames at 4 fps: 'chat' samples seconds 0, 1, 2 -> 3 frames of 32x32
    loader = MediaLoader(ServeLimits(max_request_pixels=3 * 1024 + 100))
    budget = loader.budget()
    budget.charge("messages[0].content[0]", 101)  # what earlier media of the request used
    with pytest.raises(LimitExceededError, match=r"3072 more pixels .* after 101 already decoded .*"
                                                  r"--max-request-pixels"):
        _load_video(loader, url, budget)
    assert budget.used == 101
    fresh = loader.budget()
    assert _load_video(loader, url, fresh).shape == (3, 3, 56, 56) and fresh.used == 3072
