"""FastAPI routes of Triton's generate extension and of the KServe v2 protocol (health, metadata, ``infer``).

Model names may contain ``/`` (``--served-model-name THUDM/cogvlm2-llama3-chat-19B``), so the model is a path
parameter; the routes with a suffix are declared before the bare metadata route, and the ``/versions/{version}``
forms before the plain ones (stacked decorators register bottom-up), so a suffix is never read as part of a
name. The one version is ``1``.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from ..errors import InvalidRequestError, ModelNotFoundError
from ..http import cancel_on_disconnect, json_body, parse, protocol_route, read_json
from ..security import require_api_key
from .protocol import MODEL_VERSION, InferRequest, ModelMetadata, ServerMetadata, TritonGenerateRequest
from .serving import PROTOCOL, KServe, TritonServing, render_error

router = APIRouter(route_class=protocol_route(PROTOCOL, render_error), dependencies=[Depends(require_api_key)],
                   tags=["Triton"])
health_router = APIRouter(route_class=protocol_route(PROTOCOL, render_error), tags=["Triton"])  # probes: no key
MODEL = "/v2/models/{model:path}"
VERSIONED = "/v2/models/{model:path}/versions/{version}"


def _serving(request: Request) -> TritonServing:
    return request.app.state.triton


def _kserve(request: Request) -> KServe:
    return KServe(_serving(request))


def _check_version(version: str | None) -> None:
    if version is not None and version != MODEL_VERSION:
        raise ModelNotFoundError(f"model version {version!r} does not exist; the one version is {MODEL_VERSION!r}",
                                 param="version (in the URL path)")


async def _body(request: Request) -> object:
    if "inference-header-content-length" in request.headers:
        raise InvalidRequestError(
            "binary tensor data (Inference-Header-Content-Length) is not supported; send JSON tensors "
            "(tritonclient: set_data_from_numpy(..., binary_data=False))", param="inputs")
    return await read_json(request)


@router.post(f"{MODEL}/generate", openapi_extra=json_body(TritonGenerateRequest),
             summary="Triton generate: one JSON answer")
@router.post(f"{VERSIONED}/generate", openapi_extra=json_body(TritonGenerateRequest), include_in_schema=False)
async def generate(model: str, request: Request, version: str | None = None) -> Response:
    _check_version(version)
    body = parse(TritonGenerateRequest, await _body(request))

    async def answer() -> Response:
        return JSONResponse((await _serving(request).generate(model, body, request)).model_dump(exclude_none=True))

    return await cancel_on_disconnect(request, answer())


@router.post(f"{MODEL}/generate_stream", openapi_extra=json_body(TritonGenerateRequest),
             summary="Triton generate_stream: one server-sent event per token")
@router.post(f"{VERSIONED}/generate_stream", openapi_extra=json_body(TritonGenerateRequest), include_in_schema=False)
async def generate_stream(model: str, request: Request, version: str | None = None) -> Response:
    _check_version(version)
    body = parse(TritonGenerateRequest, await _body(request))
    return await _serving(request).generate_stream(model, body, request)


@router.post(f"{MODEL}/infer", openapi_extra=json_body(InferRequest),
             summary="KServe v2 inference: text_input BYTES tensor -> text_output BYTES tensor (JSON)")
@router.post(f"{VERSIONED}/infer", openapi_extra=json_body(InferRequest), include_in_schema=False)
async def infer(model: str, request: Request, version: str | None = None) -> Response:
    _check_version(version)
    body = parse(InferRequest, await _body(request))

    async def answer() -> Response:
        return JSONResponse((await _kserve(request).infer(model, body, request)).model_dump())

    return await cancel_on_disconnect(request, answer())


@router.get(f"{MODEL}/config", summary="Triton model configuration (tritonclient's get_model_config)")
@router.get(f"{VERSIONED}/config", include_in_schema=False)
async def model_config(model: str, request: Request, version: str | None = None) -> JSONResponse:
    _check_version(version)
    return JSONResponse(_kserve(request).model_config(model))


@router.get(f"{MODEL}/ready", summary="KServe v2: 200 when the model is served (404 if not)")
@router.get(f"{VERSIONED}/ready", include_in_schema=False)
async def model_ready(model: str, request: Request, version: str | None = None) -> Response:
    _check_version(version)
    _serving(request).service.check_model(model, param="model (in the URL path)")
    return Response(status_code=200)


@health_router.get("/v2/health/live", summary="KServe v2: 200 while the server runs")
async def live() -> Response:
    return Response(status_code=200)


@health_router.get("/v2/health/ready", summary="KServe v2: 200 while the engine thread runs, else 503")
async def ready(request: Request) -> Response:
    return Response(status_code=200 if request.app.state.scheduler.alive else 503)


@router.get("/v2", response_model=ServerMetadata, summary="KServe v2 server metadata")
async def server_metadata(request: Request) -> ServerMetadata:
    return _kserve(request).server_metadata()


@router.get(MODEL, response_model=ModelMetadata, summary="KServe v2 model metadata (inputs and outputs)")
@router.get(VERSIONED, response_model=ModelMetadata, include_in_schema=False)
async def model_metadata(model: str, request: Request, version: str | None = None) -> ModelMetadata:
    _check_version(version)
    return _kserve(request).model_metadata(model)
