"""OpenAI chat completions: request -> conversation -> engine -> ``chat.completion`` (or its SSE chunks)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse

from ...engine import RequestGroup
from ..errors import ServeError, UnsupportedInputError, to_serve_error
from ..http import EventStreamResponse, now, sse
from ..messages import Message, split_parts, to_conversation
from ..service import GenerationService
from .protocol import (
    AssistantMessage,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    Choice,
    ChunkChoice,
    Delta,
    ErrorInfo,
    ErrorResponse,
    ModelCard,
    ModelList,
    Usage,
)

PROTOCOL = "openai"
_ERROR_TYPES = {
    "authentication": "authentication_error", "forbidden": "permission_error", "not_found": "not_found_error",
    "limit_exceeded": "request_too_large", "overloaded": "rate_limit_error", "timeout": "timeout_error",
    "internal": "server_error", "unavailable": "server_error",
}


class OpenAIServingChat:
    def __init__(self, service: GenerationService) -> None:
        self.service = service

    def models(self) -> ModelList:
        created = now()
        return ModelList(data=[ModelCard(id=name, created=created) for name in self.service.model_names])

    async def create(self, body: ChatCompletionRequest, request: Request) -> JSONResponse | EventStreamResponse:
        """Validate, prepare and queue the request; errors up to here are plain 4xx responses."""
        service = self.service
        service.check_model(body.model)
        if body.logprobs:
            raise UnsupportedInputError("logprobs are not supported by this server", param="logprobs")
        conversation = to_conversation(to_messages(body.messages))
        prompt = await service.prepare(conversation, template=body.template)
        requested, param = body.requested_max_tokens
        params = body.to_sampling_params(service.fit_max_tokens(prompt, requested, param=param))
        group = service.submit(prompt, params, n=body.n, protocol=PROTOCOL)
        request.state.prompt_tokens = prompt.prompt_tokens
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        model = body.model or service.model_name
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return EventStreamResponse(self._stream(group, completion_id, model, include_usage, request))
        return JSONResponse((await self._complete(group, completion_id, model, request)).model_dump())

    async def _complete(self, group: RequestGroup, completion_id: str, model: str,
                        request: Request) -> ChatCompletionResponse:
        completions = await self.service.collect(group)
        usage = _usage(group.prompt_tokens, sum(c.completion_tokens for c in completions))
        request.state.completion_tokens = usage.completion_tokens
        choices = [Choice(index=i, message=AssistantMessage(content=c.text), finish_reason=_finish(c.finish_reason))
                   for i, c in enumerate(completions)]
        return ChatCompletionResponse(id=completion_id, created=now(), model=model, choices=choices, usage=usage)

    async def _stream(self, group: RequestGroup, completion_id: str, model: str, include_usage: bool,
                      request: Request) -> AsyncIterator[str]:
        created = now()

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
            body = ChatCompletionChunk(id=completion_id, created=created, model=model, choices=choices, usage=usage)
            payload = body.model_dump()
            for choice in payload["choices"]:
                choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
            if not include_usage:  # "usage": null on every chunk only when the client asked for usage
                del payload["usage"]
            return sse(json.dumps(payload, ensure_ascii=False))

        generated = 0
        try:
            for index in range(len(group.request_ids)):
                yield chunk([ChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
            async for index, event in group.events():
                generated += event.token_id is not None
                if event.text:
                    yield chunk([ChunkChoice(index=index, delta=Delta(content=event.text))])
                if event.finish_reason is not None:
                    yield chunk([ChunkChoice(index=index, delta=Delta(), finish_reason=_finish(event.finish_reason))])
            if include_usage:
                yield chunk([], _usage(group.prompt_tokens, generated))
        except Exception as exc:  # the 200 is sent: report the failure in-band, as OpenAI-compatible servers do
            error = to_serve_error(exc)
            request.state.error = error.message
            yield sse(error_body(error).model_dump_json())
        finally:
            group.cancel()
            request.state.completion_tokens = generated
        yield sse("[DONE]")


def to_messages(messages: list[ChatMessage]) -> list[Message]:
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        text, media = split_parts(message.content, f"{where}.content")
        out.append(Message("system" if message.role == "developer" else message.role, text, media, where))
    return out


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def error_body(error: ServeError) -> ErrorResponse:
    kind = _ERROR_TYPES.get(error.kind, "invalid_request_error")
    return ErrorResponse(error=ErrorInfo(message=error.message, type=kind, param=error.param,
                                         code=error.code or error.status_code))


def render_error(request: Request, error: ServeError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status_code == 401 else None
    return JSONResponse(error_body(error).model_dump(), status_code=error.status_code, headers=headers)
