"""FastAPI routes of TGI. ``POST /generate`` is shared with vLLM (see :mod:`coglens.serve.generate_route`),
which calls :func:`generate` here for bodies with ``inputs``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from ..http import cancel_on_disconnect, json_body, parse, protocol_route, read_json
from ..security import require_api_key
from .protocol import Info, TGIGenerateRequest
from .serving import PROTOCOL, TGIServing, render_error

router = APIRouter(route_class=protocol_route(PROTOCOL, render_error), dependencies=[Depends(require_api_key)],
                   tags=["TGI"])


def _serving(request: Request) -> TGIServing:
    return request.app.state.tgi


async def generate(request: Request, data: Any, *, as_list: bool = False) -> Response:
    """Answer a TGI body: a token stream if it says ``stream: true``, else JSON (a one-item list for ``/``)."""
    body = parse(TGIGenerateRequest, data)
    if body.stream:
        return await _serving(request).generate_stream(body, request)

    async def answer() -> Response:
        result = (await _serving(request).generate(body, request)).model_dump()
        return JSONResponse([result] if as_list else result)

    return await cancel_on_disconnect(request, answer())


@router.post("/generate_stream", openapi_extra=json_body(TGIGenerateRequest),
             summary="TGI: generate, streaming token events (server-sent events)")
async def generate_stream(request: Request) -> Response:
    body = parse(TGIGenerateRequest, await read_json(request))
    return await _serving(request).generate_stream(body, request)


@router.post("/", openapi_extra=json_body(TGIGenerateRequest),
             summary="TGI compat route (huggingface_hub posts here): streams when the body says stream=true")
async def compat_generate(request: Request) -> Response:
    return await generate(request, await read_json(request), as_list=True)


@router.get("/info", response_model=Info, summary="TGI: the served model and the server's limits")
async def info(request: Request) -> Info:
    return _serving(request).info()
