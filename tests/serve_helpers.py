"""Helpers of the serve tests: a real server on a free 127.0.0.1 port (uvicorn in a thread), media data."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from PIL import Image

from coglens.engine import SamplingParams
from coglens.pipeline import Pipeline
from coglens.serve.app import create_app
from coglens.serve.settings import ServeSettings

API_KEY = "sk-test-key"
IMAGE = Path(__file__).resolve().parents[1] / "examples/images/red_circle.png"


@dataclass
class Server:
    url: str
    app: FastAPI

    @property
    def headers(self) -> dict[str, str]:
        key = self.app.state.settings.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}


@contextmanager
def run_server(settings: ServeSettings, pipeline: Pipeline | None = None) -> Iterator[Server]:
    """Serve ``create_app(settings)`` with uvicorn on a free port until the block ends."""
    app = create_app(settings, pipeline=pipeline)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield Server(f"http://127.0.0.1:{sock.getsockname()[1]}", app)
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def greedy(pipe: Pipeline, query: str, max_new_tokens: int, **inputs: object) -> str:
    return pipe.ask(query, params=SamplingParams(max_new_tokens=max_new_tokens), **inputs).text


def greedy_params(max_new_tokens: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens)


def data_url(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def image_bytes(fmt: str, size: tuple[int, int] = (40, 30), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()
