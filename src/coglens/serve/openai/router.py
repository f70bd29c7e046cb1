"""FastAPI routes of the OpenAI protocol: parse, hand to :class:`OpenAIServingChat` (or ``...Completion``), return."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from ..errors import ModelNotFoundError
from ..http import cancel_on_disconnect, json_body, parse, protocol_route, read_json
from ..security import require_api_key
from .completions import OpenAIServingCompletion
from .protocol import ChatCompletionRequest, CompletionRequest, ErrorResponse, ModelCard, ModelList
from .serving import PROTOCOL, OpenAIServingChat, render_error

router = APIRouter(route_class=protocol_route(PROTOCOL, render_error), dependencies=[Depends(require_api_key)],
                   tags=["OpenAI"], responses={400: {"model": ErrorResponse}})


def _serving(request: Request) -> OpenAIServingChat:
    return request.app.state.openai


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    return _serving(request).models()


@router.get("/v1/models/{model:path}", response_model=ModelCard)
async def get_model(model: str, request: Request) -> ModelCard:
    cards = {card.id: card for card in _serving(request).models().data}
    if model not in cards:
        raise ModelNotFoundError(f"model {model!r} is not served here", param="model", code="model_not_found")
    return cards[model]


@router.post("/v1/chat/completions", openapi_extra=json_body(ChatCompletionRequest),
             summary="Chat completion (JSON, or server-sent events with stream=true)")
async def chat_completions(request: Request) -> Response:
    body = parse(ChatCompletionRequest, await read_json(request))
    return await cancel_on_disconnect(request, _serving(request).create(body, request))


@router.post("/v1/completions", openapi_extra=json_body(CompletionRequest),
             summary="Legacy text completion: the prompt continued as is (JSON, or server-sent events)")
async def completions(request: Request) -> Response:
    body = parse(CompletionRequest, await read_json(request))
    serving: OpenAIServingCompletion = request.app.state.openai_completions
    return await cancel_on_disconnect(request, serving.create(body, request))
