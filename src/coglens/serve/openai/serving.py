"""OpenAI chat completions: request -> conversation -> engine -> ``chat.completion`` (or its SSE chunks).

With ``logprobs`` each choice (and each stream chunk) carries ``logprobs.content``: one entry per generated token
with its text, logprob, UTF-8 bytes and the ``top_logprobs`` most likely alternatives, most likely first.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse

from ...engine import RequestGroup, TokenEvent
from ..errors import InvalidRequestError, ServeError
from ..http import EventStreamResponse, in_band_errors, now, sse
from ..messages import Message, split_parts, to_conversation
from ..service import GenerationService, Requested
from .protocol import (
    AssistantMessage,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    ErrorInfo,
    ErrorResponse,
    ModelCard,
    ModelList,
    TokenLogprob,
    TopLogprob,
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
        service = self.service
        return ModelList(data=[*(ModelCard(id=name, created=created) for name in service.model_names),
                               *(ModelCard(id=name, created=created, parent=service.model_name)
                                 for name in service.adapter_names)])

    async def create(self, body: ChatCompletionRequest, request: Request) -> JSONResponse | EventStreamResponse:
        """Validate, prepare and queue the request; errors up to here are plain 4xx responses."""
        service = self.service
        adapter = service.adapter_for(body.model, body.adapter_id)
        check_stream_options(body.stream, body.stream_options)
        if body.top_logprobs is not None and not body.logprobs:
            raise InvalidRequestError("top_logprobs needs logprobs: true", param="top_logprobs")
        conversation = to_conversation(to_messages(body.messages))
        max_tokens, param = body.requested_max_tokens
        prompt = await service.prepare(conversation, Requested(max_tokens=max_tokens, max_tokens_param=param,
                                                               n=body.n, seed=body.seed), template=body.template)
        params = body.to_sampling_params(prompt.max_new_tokens)
        group = service.submit(prompt, params, n=body.n, protocol=PROTOCOL, adapter=adapter)
        request.state.prompt_tokens = prompt.prompt_tokens
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        model = adapter or body.model or service.model_name
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            chunks = self._stream(group, completion_id, model, include_usage, body.logprobs)
            return EventStreamResponse(in_band_errors(request, group, chunks, error_event, end=sse("[DONE]")))
        return JSONResponse((await self._complete(group, completion_id, model, body.logprobs, request)).model_dump())

    async def _complete(self, group: RequestGroup, completion_id: str, model: str, logprobs: bool,
                        request: Request) -> ChatCompletionResponse:
        completions = await self.service.collect(group)
        usage = usage_of(group.prompt_tokens, sum(c.completion_tokens for c in completions))
        request.state.completion_tokens = usage.completion_tokens
        choices = [Choice(index=i, message=AssistantMessage(content=c.text),
                          finish_reason=finish_reason(c.finish_reason),
                          logprobs=await self._logprobs(c.token_ids, c.logprobs, c.top_logprobs) if logprobs else None)
                   for i, c in enumerate(completions)]
        return ChatCompletionResponse(id=completion_id, created=now(), model=model, choices=choices, usage=usage)

    async def _logprobs(self, token_ids: list[int], logprobs: list[float],
                        top: list[list[tuple[int, float]]]) -> ChoiceLogprobs:
        """OpenAI's ``logprobs.content`` for these tokens (every token text decoded in one call)."""
        texts = iter(await self.service.token_texts([*token_ids, *(i for alts in top for i, _ in alts)]))
        entries = [(next(texts), logprob) for logprob in logprobs]
        content = [TokenLogprob(token=text, logprob=logprob, bytes=_bytes(text),
                                top_logprobs=[_top(next(texts), lp) for _, lp in alts])
                   for (text, logprob), alts in zip(entries, top, strict=True)]
        return ChoiceLogprobs(content=content)

    async def _stream(self, group: RequestGroup, completion_id: str, model: str, include_usage: bool,
                      logprobs: bool) -> AsyncIterator[str]:
        created = now()

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
            body = ChatCompletionChunk(id=completion_id, created=created, model=model, choices=choices, usage=usage)
            payload = body.model_dump()
            for choice in payload["choices"]:
                choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
            if not include_usage:  # "usage": null on every chunk only when the client asked for usage
                del payload["usage"]
            return sse(json.dumps(payload, ensure_ascii=False))

        async def token_logprobs(event: TokenEvent) -> ChoiceLogprobs | None:
            if not logprobs or event.token_id is None:
                return None
            return await self._logprobs([event.token_id], [float(event.logprob or 0.0)], [event.top_logprobs])

        for index in range(len(group.request_ids)):
            yield chunk([ChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
        async for index, event in group.events():
            token_logprob = await token_logprobs(event)
            if event.text or token_logprob is not None:
                yield chunk([ChunkChoice(index=index, delta=Delta(content=event.text), logprobs=token_logprob)])
            if event.finish_reason is not None:
                reason = finish_reason(event.finish_reason)
                yield chunk([ChunkChoice(index=index, delta=Delta(), finish_reason=reason)])
        if include_usage:
            yield chunk([], usage_of(group.prompt_tokens, group.generated_tokens))


def to_messages(messages: list[ChatMessage]) -> list[Message]:
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        text, media = split_parts(message.content, f"{where}.content")
        out.append(Message("system" if message.role == "developer" else message.role, text, media, where))
    return out


def _top(text: str, logprob: float) -> TopLogprob:
    return TopLogprob(token=text, logprob=logprob, bytes=_bytes(text))


def _bytes(text: str) -> list[int] | None:
    """The token's UTF-8 bytes; None when it decodes to U+FFFD (part of a character: its own bytes are not
    recoverable from the text, and U+FFFD's bytes would be wrong)."""
    return None if "\ufffd" in text else list(text.encode())


def usage_of(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


def finish_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def check_stream_options(stream: bool, options: object) -> None:
    if options is not None and not stream:
        raise InvalidRequestError("stream_options is only allowed with stream: true (as in OpenAI's API)",
                                  param="stream_options")


def error_event(error: ServeError) -> str:
    return sse(error_body(error).model_dump_json())


def error_body(error: ServeError) -> ErrorResponse:
    kind = _ERROR_TYPES.get(error.kind, "invalid_request_error")
    return ErrorResponse(error=ErrorInfo(message=error.message, type=kind, param=error.param,
                                         code=error.code or error.status_code))


def render_error(request: Request, error: ServeError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status_code == 401 else None
    return JSONResponse(error_body(error).model_dump(), status_code=error.status_code, headers=headers)
