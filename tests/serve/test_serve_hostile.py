"""A table of hostile and broken requests thrown at one running server: each gets its documented 4xx, in its
protocol's shape, and the server answers normally afterwards (README: "Limits and hostile input")."""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from serve_helpers import Server, data_url, image_bytes, run_server

from coglens.serve.limits import ServeLimits
from coglens.serve.settings import ServeSettings

CHAT, TGI, TRITON, COMPLETIONS = "/v1/chat/completions", "/generate", "/v2/models/tiny:cogvlm2/generate", \
    "/v1/completions"
INFER = "/v2/models/tiny:cogvlm2/infer"
USER = {"role": "user", "content": "hi"}


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (the pixel data is a stub)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + \
        chunk(b"IEND", b"")


def _image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def _chat_with(*parts: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": [*parts, {"type": "text", "text": "what?"}]}], **fields}


def _gif_bomb() -> bytes:
    out = io.BytesIO()
    Image.new("P", (1, 1)).save(out, format="GIF")
    data = bytearray(out.getvalue())
    data[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen 65535 x 65535
    return bytes(data)


GARBAGE_PNG = data_url(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "image/png")
ZERO_PNG = data_url(_png_header_only(0, 0), "image/png")
HUGE_PNG = data_url(_png_header_only(30_000, 30_000), "image/png")
RED = data_url(image_bytes("PNG"), "image/png")

# (id, path, body: JSON-able, or bytes sent as they are, expected status, words in the error)
CASES: list[tuple[str, str, Any, int, str]] = [
    # body and JSON shape
    ("empty body", CHAT, b"", 400, "empty"),
    ("json null", CHAT, b"null", 400, "JSON object"),
    ("json list", CHAT, b"[]", 400, "JSON object"),
    ("truncated json", CHAT, b'{"messages": [', 400, "not valid JSON"),
    ("invalid utf-8", CHAT, b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, "not valid JSON"),
    ("lone surrogate", CHAT, b'{"messages": [{"role": "user", "content": "\\udc00"}]}', 400, "invalid Unicode"),
    ("50000-deep nesting", CHAT, b"[" * 50_000 + b"]" * 50_000, 400, "--max-json-depth"),
    ("body over the limit", CHAT, {"messages": [{"role": "user", "content": "x" * 300_000}]}, 413, "--max-body-mb"),
    ("NaN literal", CHAT, b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400,
     "temperature"),
    ("Infinity literal", CHAT, b'{"messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}', 400,
     "top_p"),
    # types and values
    ("no messages", CHAT, {"model": "x"}, 400, "messages"),
    ("empty messages", CHAT, {"messages": []}, 400, "messages"),
    ("unknown role", CHAT, {"messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
    ("content is a number", CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, "content"),
    ("ends with the assistant", CHAT, {"messages": [USER, {"role": "assistant", "content": "x"}]}, 400,
     "end with a user"),
    ("max_tokens true", CHAT, {"messages": [USER], "max_tokens": True}, 400, "max_tokens"),
    ("max_tokens negative", CHAT, {"messages": [USER], "max_tokens": -1}, 400, "max_tokens"),
    ("max_tokens past the context", CHAT, {"messages": [USER], "max_tokens": 10**12}, 400, "max_tokens"),
    ("temperature a string", CHAT, {"messages": [USER], "temperature": "hot"}, 400, "temperature"),
    ("stream a string", CHAT, {"messages": [USER], "stream": "yes"}, 400, "stream"),
    ("n too large", CHAT, {"messages": [USER], "n": 1000}, 413, "--max-n"),
    ("seed past 64 bits", CHAT, {"messages": [USER], "seed": 2**70}, 400, "seed"),
    ("empty stop string", CHAT, {"messages": [USER], "stop": [""]}, 400, "stop"),
    ("tools", CHAT, {"messages": [USER], "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ("json response_format", CHAT, {"messages": [USER], "response_format": {"type": "json_object"}}, 400,
     "response_format"),
    ("unknown model", CHAT, {"messages": [USER], "model": "gpt-5"}, 404, "not served"),
    # media
    ("garbage PNG body", CHAT, _chat_with(_image_part(GARBAGE_PNG)), 400, "image"),
    ("0x0 PNG", CHAT, _chat_with(_image_part(ZERO_PNG)), 400, "zero"),
    ("30000x30000 PNG header", CHAT, _chat_with(_image_part(HUGE_PNG)), 413, "--max-image-pixels"),
    ("GIF screen 65535x65535", CHAT, _chat_with(_image_part(data_url(_gif_bomb(), "image/gif"))), 413,
     "--max-image-pixels"),
    ("data URL not base64", CHAT, _chat_with(_image_part("data:image/png,hello")), 400, "base64"),
    ("data URL bad base64", CHAT, _chat_with(_image_part("data:image/png;base64,@@@")), 400, "base64"),
    ("text where an image goes", CHAT, _chat_with(_image_part("data:text/plain;base64,aGVsbG8=")), 415, "image"),
    ("not an image format", CHAT, _chat_with(_image_part("data:image/png;base64,aGVsbG8=")), 415, "PNG"),
    ("remote URL while disabled", CHAT, _chat_with(_image_part("http://169.254.169.254/latest")), 403,
     "--allow-remote-media"),
    ("local path outside the folder", CHAT, _chat_with(_image_part("/etc/passwd")), 403, "outside"),
    ("local path with NUL", CHAT, _chat_with(_image_part("red\u0000.png")), 400, "image"),
    ("file URL with a host", CHAT, _chat_with(_image_part("file://evil.example/x.png")), 403, "host"),
    ("unsupported scheme", CHAT, _chat_with(_image_part("ftp://example.com/x.png")), 400, "scheme"),
    ("video on an image model", CHAT,
     _chat_with({"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}), 400, "CogVLM2-Video"),
    ("two images in one message", CHAT, _chat_with(_image_part(RED), _image_part(RED)), 400, "one image"),
    ("too many media parts", CHAT, {"messages": [
        m for _ in range(5) for m in ({"role": "user", "content": [_image_part(RED)]},
                                      {"role": "assistant", "content": "ok"})][:-1]}, 413, "--max-media-parts"),
    ("prompt longer than its tokens can be", CHAT, {"messages": [{"role": "user", "content": "ab " * 20_000}]}, 413,
     "--max-prompt-tokens"),
    # TGI (invalid input is a 422, as TGI answers it)
    ("tgi without inputs", TGI, {"parameters": {}}, 400, "inputs"),
    ("tgi max_new_tokens a string", TGI, {"inputs": "hi", "parameters": {"max_new_tokens": "10"}}, 422,
     "max_new_tokens"),
    ("tgi grammar", TGI, {"inputs": "hi", "parameters": {"grammar": {"type": "json", "value": {}}}}, 422, "grammar"),
    ("tgi adapter_id", TGI, {"inputs": "hi", "parameters": {"adapter_id": "456"}}, 404, "no adapters"),
    ("tgi best_of streamed", "/generate_stream",
     {"inputs": "hi", "parameters": {"best_of": 2, "do_sample": True}}, 422, "best_of"),
    ("tgi truncate zero", TGI, {"inputs": "hi", "parameters": {"truncate": 0}}, 422, "truncate"),
    ("tgi watermark a string", TGI, {"inputs": "hi", "parameters": {"watermark": "no"}}, 422, "watermark"),
    # vLLM
    ("vllm n zero", TGI, {"prompt": "hi", "n": 0}, 400, "n"),
    ("vllm beam search", TGI, {"prompt": "hi", "use_beam_search": True}, 400, "use_beam_search"),
    # Triton / KServe
    ("triton unknown model", "/v2/models/nope/generate", {"text_input": "hi"}, 404, "not served"),
    ("triton without text_input", TRITON, {"parameters": {}}, 400, "text_input"),
    ("triton typical_p out of range", TRITON, {"text_input": "hi", "parameters": {"typical_p": 5}}, 400,
     "typical_p"),
    ("kserve wrong datatype", INFER, {"inputs": [{"name": "text_input", "shape": [1], "datatype": "FP32",
                                                  "data": [1.0]}]}, 400, "BYTES"),
    ("kserve no inputs", INFER, {"inputs": []}, 400, "text_input"),
    # OpenAI completions
    ("completions with token ids", COMPLETIONS, {"prompt": [1, 2, 3]}, 400, "prompt"),
    ("completions suffix", COMPLETIONS, {"prompt": "hi", "suffix": "end"}, 400, "suffix"),
    ("completions logprobs 10", COMPLETIONS, {"prompt": "hi", "logprobs": 10}, 400, "logprobs"),
]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    media = tmp_path_factory.mktemp("hostile-media")
    (media / "red.png").write_bytes(image_bytes("PNG"))
    limits = ServeLimits(max_body_bytes=256 * 1024, max_image_pixels=1_000_000, max_media_parts=4,
                         max_prompt_tokens=512, max_json_depth=32)
    with run_server(ServeSettings(model="tiny:cogvlm2", device="cpu", limits=limits,
                                  allow_local_media=Path(media))) as server:
        yield server


def _message(response: httpx.Response) -> str:
    error = response.json()["error"]
    return error["message"] if isinstance(error, dict) else str(error)


def test_the_table_is_large_enough():
    assert len(CASES) >= 40
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize(("path", "body", "status", "words"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_hostile_input_gets_its_4xx(hostile, path, body, status, words):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{hostile.url}{path}", content=content, headers={"Content-Type": "application/json"},
                          timeout=60)
    assert response.status_code == status, response.text[:500]
    assert words in _message(response), _message(response)
    assert httpx.get(f"{hostile.url}/health").status_code == 200


def test_the_server_still_answers_after_the_table(hostile):
    response = httpx.post(f"{hostile.url}{CHAT}", json=_chat_with(_image_part(RED), max_tokens=3, temperature=0))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
