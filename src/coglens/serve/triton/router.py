"""FastAPI routes of Triton's generate extension."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from ..http import cancel_on_disconnect, json_body, parse, protocol_route, read_json
from ..security import require_api_key
from .protocol import TritonGenerateRequest
from .serving import PROTOCOL, TritonServing, render_error

router = APIRouter(route_class=protocol_route(PROTOCOL, render_error), dependencies=[Depends(require_api_key)],
                   tags=["Triton"])


def _serving(request: Request) -> TritonServing:
    return request.app.state.triton


@router.post("/v2/models/{model}/generate", openapi_extra=json_body(TritonGenerateRequest),
             summary="Triton generate: one JSON answer")
async def generate(model: str, request: Request) -> Response:
    body = parse(TritonGenerateRequest, await read_json(request, request.app.state.service.limits.max_body_bytes))

    async def answer() -> Response:
        return JSONResponse((await _serving(request).generate(model, body, request)).model_dump(exclude_none=True))

    return await cancel_on_disconnect(request, answer())


@router.post("/v2/models/{model}/generate_stream", openapi_extra=json_body(TritonGenerateRequest),
             summary="Triton generate_stream: one server-sent event per token")
async def generate_stream(model: str, request: Request) -> Response:
    body = parse(TritonGenerateRequest, await read_json(request, request.app.state.service.limits.max_body_bytes))
    return await _serving(request).generate_stream(model, body, request)
