"""``create_app(settings)``: the FastAPI app speaking OpenAI, TGI, vLLM and Triton/KServe v2 from one engine.

The model is loaded (unless a :class:`~coglens.pipeline.Pipeline` is passed in) and the scheduler thread
started in the lifespan, never at import. Handlers find everything on ``app.state``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from ..engine import Scheduler
from ..modeling.configuration_cogvlm import MODEL_TYPES
from ..pipeline import Pipeline
from ..tiny.variants import TINY_PREFIX
from .access_log import AccessLogMiddleware
from .errors import ServeError
from .generate_route import router as generate_router
from .http import SCHEMAS_KEY, protocol_route
from .media import MediaLoader
from .metrics import CONTENT_TYPE, ServeMetrics
from .openai.completions import OpenAIServingCompletion
from .openai.router import router as openai_router
from .openai.serving import OpenAIServingChat
from .security import require_api_key
from .service import GenerationService
from .settings import ServeSettings
from .tgi.router import router as tgi_router
from .tgi.serving import TGIServing
from .triton.router import health_router as kserve_health_router
from .triton.router import router as triton_router
from .triton.serving import TritonServing
from .vllm.serving import VLLMServing


def create_app(settings: ServeSettings | None = None, *, pipeline: Pipeline | None = None) -> FastAPI:
    """Build the app; with ``pipeline`` given, serve it instead of loading ``settings.model`` (which then
    only names it)."""
    settings = settings or ServeSettings()
    if pipeline is not None and settings.adapters:
        bank = pipeline.engine.adapters
        if bank is None or set(bank.names) != set(settings.adapters):
            raise ValueError("settings.adapters names adapters the given pipeline did not load: load it with "
                             "Pipeline.load(..., adapters=settings.adapters)")
    metrics = ServeMetrics()
    app = FastAPI(title="CogLens", summary="CogVLM / CogVLM2 / CogVLM2-Video over OpenAI, TGI, vLLM and Triton",
                  lifespan=_lifespan)
    app.state.settings = settings
    app.state.pipeline = pipeline
    app.state.metrics = metrics
    app.add_middleware(AccessLogMiddleware, metrics=metrics)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    for router in (_ops_router(), kserve_health_router, openai_router, generate_router, tgi_router, triton_router):
        app.include_router(router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: ServeSettings = app.state.settings
    pipeline: Pipeline | None = app.state.pipeline
    if pipeline is None:
        pipeline = await anyio.to_thread.run_sync(lambda: Pipeline.load(
            settings.model, tokenizer=settings.tokenizer, dtype=settings.dtype, device=settings.device,
            max_batch_size=settings.max_batch_size, quantize=settings.quantize,
            quantize_vision=settings.quantize_vision, adapters=settings.adapters))
        app.state.pipeline = pipeline
    metrics: ServeMetrics = app.state.metrics
    limits = settings.limits
    scheduler = Scheduler(pipeline.engine, max_queue=limits.max_queue, request_timeout_s=limits.request_timeout_s,
                          metrics=metrics)
    metrics.watch_engine(lambda: scheduler.engine.stats)
    service = GenerationService(
        model=pipeline.model, tokenizer=pipeline.tokenizer, scheduler=scheduler, limits=limits,
        media=MediaLoader(limits, local_root=settings.allow_local_media, allow_remote=settings.allow_remote_media),
        model_names=model_names(settings, pipeline), template=settings.template,
    )
    app.state.scheduler = scheduler
    app.state.service = service
    app.state.openai = OpenAIServingChat(service)
    app.state.openai_completions = OpenAIServingCompletion(service)
    app.state.tgi = TGIServing(service)
    app.state.vllm = VLLMServing(service)
    app.state.triton = TritonServing(service)
    scheduler.start()
    try:
        yield
    finally:
        scheduler.stop()


def model_names(settings: ServeSettings, pipeline: Pipeline | None = None) -> list[str]:
    """Names clients may send as ``model`` (and in Triton paths): ``--served-model-name`` values first (else
    ``--model`` as given, like vLLM), then the checkpoint folder's name and the model type
    (``cogvlm2_llama3_video``, as the MindIE guides send it). Without ``pipeline``: the names known before the
    model loads."""
    names = list(settings.served_model_names or [settings.model])
    if not settings.model.startswith(TINY_PREFIX):
        names.append(Path(settings.model).name)
    if pipeline is not None:
        names += [pipeline.model_path.name, MODEL_TYPES[pipeline.config.variant]]
    return list(dict.fromkeys(names))


def _ops_router() -> APIRouter:
    router = APIRouter(route_class=protocol_route("ops", _render_plain), tags=["Operations"])

    @router.get("/health", summary="200 while the engine thread runs (no auth)")
    async def health(request: Request) -> JSONResponse:
        scheduler: Scheduler = request.app.state.scheduler
        alive = scheduler.alive
        return JSONResponse({"status": "ok" if alive else "engine stopped"}, status_code=200 if alive else 503)

    @router.get("/metrics", dependencies=[Depends(require_api_key)], summary="Prometheus metrics")
    async def metrics(request: Request) -> Response:
        return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)

    return router


def _render_plain(request: Request, error: ServeError) -> JSONResponse:
    return JSONResponse({"error": error.message}, status_code=error.status_code)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, plus the request-body schemas that hand-parsed routes declare (see ``json_body``)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                components.update(operation.pop(SCHEMAS_KEY, {}))
        app.openapi_schema = schema
    return app.openapi_schema
