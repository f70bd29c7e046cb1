"""``POST /generate``, the one path two protocols share: a body with ``inputs`` is TGI, with ``prompt`` vLLM."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from .errors import InvalidRequestError, ServeError
from .http import json_body, protocol_route, read_json
from .security import require_api_key
from .tgi import router as tgi_router
from .tgi import serving as tgi_serving
from .tgi.protocol import TGIGenerateRequest
from .vllm import router as vllm_router
from .vllm import serving as vllm_serving
from .vllm.protocol import VLLMGenerateRequest


def _render(request: Request, error: ServeError) -> JSONResponse:
    """Errors in the shape of the protocol the body spoke; a plain 400 in TGI's shape when it could not be told."""
    protocol = getattr(request.state, "protocol", None)
    if protocol == vllm_serving.PROTOCOL:
        return vllm_serving.render_error(request, error)
    if protocol == tgi_serving.PROTOCOL:
        return tgi_serving.render_error(request, error)
    return JSONResponse(tgi_serving.error_body(error).model_dump(), status_code=error.status_code)


router = APIRouter(route_class=protocol_route(tgi_serving.PROTOCOL, _render),
                   dependencies=[Depends(require_api_key)], tags=["TGI", "vLLM"])


@router.post("/generate", openapi_extra=json_body(TGIGenerateRequest, VLLMGenerateRequest),
             summary="TGI (body with `inputs`) or vLLM (body with `prompt`) generation")
async def generate(request: Request) -> Response:
    data = await read_json(request)
    if isinstance(data, dict) and "prompt" in data and "inputs" not in data:
        request.state.protocol = vllm_serving.PROTOCOL
        return await vllm_router.generate(request, data)
    if isinstance(data, dict) and "inputs" in data:
        return await tgi_router.generate(request, data)
    request.state.protocol = None  # neither protocol: the body could not be told
    raise InvalidRequestError("the body needs `inputs` (TGI style) or `prompt` (vLLM style)", param="inputs")
