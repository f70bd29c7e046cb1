"""Requests are checked cheapest first: body time and shape, media counts, prompt length, then media decoding."""

from __future__ import annotations

import gzip
import socket
import struct
import time
import zlib
from collections.abc import Iterator

import httpx
import pytest
import torch
from serve_helpers import Server, data_url, run_server

from coglens.modeling.routing import LANGUAGE_TOKEN_TYPE, VISION_TOKEN_TYPE
from coglens.serve.errors import InvalidRequestError
from coglens.serve.limits import ServeLimits
from coglens.serve.service import truncate_text
from coglens.serve.settings import ServeSettings

GARBAGE_PNG = data_url(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "image/png")
ROUTES = (("/v1/chat/completions", lambda text: {"messages": [{"role": "user", "content": text}]}),
          ("/generate", lambda text: {"inputs": text}),
          ("/v2/models/tiny:cogvlm2/generate", lambda text: {"text_input": text}))


@pytest.fixture(scope="module")
def checked() -> Iterator[Server]:
    limits = ServeLimits(max_prompt_tokens=60, max_media_parts=3, body_timeout_s=1.0, max_json_depth=8,
                         max_request_pixels=10_000, max_n=2)
    with run_server(ServeSettings(model="tiny:cogvlm2", device="cpu", limits=limits)) as server:
        yield server


def _error(response: httpx.Response) -> str:
    error = response.json()["error"]
    return error["message"] if isinstance(error, dict) else error


def _healthy(server: Server) -> None:
    assert httpx.get(f"{server.url}/health").status_code == 200
    answer = httpx.post(f"{server.url}/v1/chat/completions",
                        json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0})
    assert answer.status_code == 200, answer.text


def test_a_body_shorter_than_its_content_length_times_out_with_408(checked):
    host, port = checked.url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=20) as conn:
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"messages\": ")
        reply = b""
        while b"--body-timeout" not in reply and (chunk := conn.recv(65536)):
            reply += chunk
    reply = reply.decode()
    assert reply.startswith("HTTP/1.1 408"), reply
    assert "--body-timeout" in reply, reply
    assert time.monotonic() - started < 10
    _healthy(checked)


@pytest.mark.parametrize("path", [path for path, _ in ROUTES])
def test_deep_json_is_a_400_naming_the_depth_limit(checked, path):
    for body in ("[" * 50_000 + "]" * 50_000, '{"a": ' * 9 + "1" + "}" * 9):
        response = httpx.post(f"{checked.url}{path}", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code in (400, 422), response.text
        assert "--max-json-depth" in _error(response)
    _healthy(checked)


@pytest.mark.parametrize(("path", "make"), ROUTES)
def test_a_lone_surrogate_is_a_4xx_naming_where_it_is(checked, path, make):
    body = httpx.Request("POST", "/", json=make("PLACEHOLDER")).content.replace(b"PLACEHOLDER", b"ab\\ud800cd")
    response = httpx.post(f"{checked.url}{path}", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422), response.text
    assert "invalid Unicode" in _error(response)
    _healthy(checked)


def test_a_huge_prompt_is_refused_without_tokenizing_it(checked):
    service = checked.app.state.service
    calls = []
    pool = service._tokenizers
    borrow = pool.borrow

    def counting_borrow():
        calls.append(1)
        return borrow()

    pool.borrow = counting_borrow
    try:
        response = httpx.post(f"{checked.url}/generate", json={"inputs": "word " * 200_000})
    finally:
        del pool.borrow
    assert response.status_code == 413
    assert "--max-prompt-tokens" in _error(response) and "characters" in _error(response)
    assert calls == []


def test_media_are_counted_before_any_is_read(checked):
    parts = [{"type": "image_url", "image_url": {"url": GARBAGE_PNG}}] * 4
    messages = [{"role": "user", "content": [part]} for part in parts]
    messages = [m for pair in zip(messages, [{"role": "assistant", "content": "ok"}] * 4, strict=True) for m in pair]
    response = httpx.post(f"{checked.url}/v1/chat/completions", json={"messages": messages[:-1]})
    assert response.status_code == 413, response.text
    assert "--max-media-parts" in _error(response)


def test_prompt_length_is_checked_before_images_are_decoded(checked):
    """A garbage image behind a prompt that is too long: the (cheap) length error comes, not the decode error."""
    content = [{"type": "image_url", "image_url": {"url": GARBAGE_PNG}}, {"type": "text", "text": "word " * 60}]
    response = httpx.post(f"{checked.url}/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": content}]})
    assert response.status_code == 413, response.text
    assert "--max-prompt-tokens" in _error(response)


def _png(width: int, height: int, idat: bytes) -> str:
    """A PNG whose header says ``width`` x ``height`` and whose image data is ``idat`` (garbage, if wanted)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return data_url(png, "image/png")


def _image_turns(*urls: str) -> list[dict]:
    turns = [m for url in urls for m in ({"role": "user", "content": [{"type": "image_url", "image_url": url}]},
                                         {"role": "assistant", "content": "ok"})]
    *earlier, last = turns[:-1]  # ends with the last image's user turn, which gets the question too
    return [*earlier, {"role": "user", "content": [*last["content"], {"type": "text", "text": "hi"}]}]


@pytest.mark.parametrize(("fields", "status", "words"), [
    ({"n": 3}, 413, "--max-n"),
    ({"seed": 2**63 - 1, "n": 2}, 400, "seed+i"),
    ({"max_tokens": 5000}, 400, "max_tokens"),
])
def test_choices_seed_and_budget_are_checked_before_any_image_is_read(checked, fields, status, words):
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": GARBAGE_PNG}]}], **fields}
    response = httpx.post(f"{checked.url}/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    assert words in _error(response)


def test_the_request_pixel_budget_is_summed_from_headers_before_decoding(checked):
    """The second image's body is garbage, the third is over the budget: the budget answers, nothing decoded."""
    small = _png(40, 30, zlib.compress(b"\0" * (30 * (1 + 40 * 3))))
    garbage_body = _png(50, 50, bytes(range(256)))
    over = _png(100, 100, b"")
    response = httpx.post(f"{checked.url}/v1/chat/completions",
                          json={"messages": _image_turns(small, garbage_body, over), "max_tokens": 2})
    assert response.status_code == 413, response.text
    assert "--max-request-pixels" in _error(response)


def test_a_seed_at_the_top_of_the_range_works_for_one_choice(checked):
    response = httpx.post(f"{checked.url}/generate", json={"inputs": "hi", "parameters": {
        "seed": 2**63 - 1, "do_sample": True, "max_new_tokens": 2}})
    assert response.status_code == 200, response.text


def _types(*runs: tuple[int, int]) -> torch.Tensor:
    return torch.tensor([t for t, n in runs for _ in range(n)])


def test_truncate_keeps_bos_images_and_the_last_text_tokens():
    types = _types((LANGUAGE_TOKEN_TYPE, 1), (VISION_TOKEN_TYPE, 3), (LANGUAGE_TOKEN_TYPE, 6))
    ids = torch.arange(10)
    new_ids, new_types = truncate_text(ids, types, 2, param="truncate")
    assert new_ids.tolist() == [0, 1, 2, 3, 8, 9]
    assert new_types.tolist() == [0, 1, 1, 1, 0, 0]
    same_ids, _ = truncate_text(ids, types, 6, param="truncate")
    assert same_ids.tolist() == list(range(10))
    text_only = truncate_text(torch.arange(5), torch.zeros(5, dtype=torch.long), 1, param="truncate")[0]
    assert text_only.tolist() == [0, 4]
    with pytest.raises(InvalidRequestError, match="truncate=0"):
        truncate_text(ids, types, 0, param="truncate")


def test_a_web_page_of_another_origin_cannot_post(checked):
    """Bodies are parsed whatever their Content-Type, so the Origin a browser sends is what stops a cross-site
    "simple" POST (text/plain) from a web page; same-origin pages (/docs) and clients without Origin pass."""
    body = '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}'
    host = checked.url.removeprefix("http://")
    evil = httpx.post(f"{checked.url}/v1/chat/completions", content=body,
                      headers={"Content-Type": "text/plain", "Origin": "https://evil.example"})
    assert evil.status_code == 403 and "--cors-origin" in _error(evil)
    for headers in ({"Origin": f"http://{host}"}, {}):
        response = httpx.post(f"{checked.url}/v1/chat/completions", content=body,
                              headers={"Content-Type": "text/plain", **headers})
        assert response.status_code == 200, response.text


def test_compressed_bodies_are_a_415(checked):
    response = httpx.post(f"{checked.url}/generate", content=gzip.compress(b'{"inputs": "hi"}'),
                          headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert response.status_code == 415 and "Content-Encoding" in _error(response)


def test_stream_options_need_stream(checked):
    for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                       ("/v1/completions", {"prompt": "hi"})):
        response = httpx.post(f"{checked.url}{path}", json={**body, "stream_options": {"include_usage": True}})
        assert response.status_code == 400 and "stream_options" in _error(response), path


def test_a_prompt_longer_than_the_context_can_hold_is_refused_before_tokenizing():
    """With a generous --max-prompt-tokens the context bounds the characters: 2048 positions of at most 6
    characters (the tiny vocabulary's longest token) cannot hold 13,000 characters."""
    limits = ServeLimits(max_prompt_tokens=1_000_000)
    with run_server(ServeSettings(model="tiny:cogvlm2", device="cpu", limits=limits)) as server:
        response = httpx.post(f"{server.url}/generate", json={"inputs": "abcde " * 2200})
        assert response.status_code == 422 and "context" in _error(response)
        truncated = httpx.post(f"{server.url}/generate", json={"inputs": "abcde " * 2200, "parameters": {
            "truncate": 50, "max_new_tokens": 2}})
        assert truncated.status_code == 200, truncated.text
