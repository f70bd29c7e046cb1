"""The vLLM handler of the shared ``POST /generate`` (see :mod:`coglens.serve.generate_route`): vLLM's
simple API server has no other route."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from ..http import cancel_on_disconnect, parse
from .protocol import VLLMGenerateRequest
from .serving import VLLMServing


def _serving(request: Request) -> VLLMServing:
    return request.app.state.vllm


async def generate(request: Request, data: Any) -> Response:
    body = parse(VLLMGenerateRequest, data)
    if body.stream:
        return await _serving(request).generate_stream(body, request)

    async def answer() -> Response:
        return JSONResponse((await _serving(request).generate(body, request)).model_dump())

    return await cancel_on_disconnect(request, answer())
