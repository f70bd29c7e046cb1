"""Triton generate: ``text_input`` + ``parameters`` -> engine -> ``text_output`` (streamed per token)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse

from ...engine import RequestGroup
from ..errors import ServeError, to_serve_error
from ..http import EventStreamResponse, sse
from ..messages import completion_prompt
from ..service import GenerationService, PreparedPrompt
from .protocol import (
    DEFAULT_MAX_NEW_TOKENS,
    Details,
    ErrorResponse,
    GenerateResponse,
    TritonGenerateRequest,
)

PROTOCOL = "triton"


class TritonServing:
    def __init__(self, service: GenerationService) -> None:
        self.service = service

    async def start(self, model: str, body: TritonGenerateRequest,
                    request: Request) -> tuple[RequestGroup, PreparedPrompt, str]:
        service = self.service
        service.check_model(model, param="model (in the URL path)")
        prompt = await service.prepare(completion_prompt(body.text_input, "text_input"),
                                       template=body.parameters.template, template_param="parameters.template")
        requested, param = body.requested_max_tokens
        if requested is None:
            requested = min(DEFAULT_MAX_NEW_TOKENS, service.fit_max_tokens(prompt, None, param=param))
        max_new = service.fit_max_tokens(prompt, requested, param=param)
        group = service.submit(prompt, body.parameters.to_sampling_params(max_new), protocol=PROTOCOL)
        request.state.prompt_tokens = prompt.prompt_tokens
        return group, prompt, body.id or uuid.uuid4().hex

    async def generate(self, model: str, body: TritonGenerateRequest, request: Request) -> GenerateResponse:
        group, prompt, request_id = await self.start(model, body, request)
        completion = (await self.service.collect(group))[0]
        request.state.completion_tokens = completion.completion_tokens
        details = Details(finish_reason="length" if completion.finish_reason == "length" else "stop",
                          generated_tokens=completion.completion_tokens,
                          prompt_tokens=prompt.prompt_tokens) if body.parameters.details else None
        return GenerateResponse(model_name=model, id=request_id, text_output=completion.text, details=details)

    async def generate_stream(self, model: str, body: TritonGenerateRequest, request: Request) -> EventStreamResponse:
        group, prompt, request_id = await self.start(model, body, request)
        return EventStreamResponse(self._events(model, body, group, prompt, request_id, request))

    async def _events(self, model: str, body: TritonGenerateRequest, group: RequestGroup, prompt: PreparedPrompt,
                      request_id: str, request: Request) -> AsyncIterator[str]:
        generated = 0
        try:
            async for _, event in group.events():
                generated += event.token_id is not None
                details = None
                if event.finish_reason is not None and body.parameters.details:
                    details = Details(finish_reason="length" if event.finish_reason == "length" else "stop",
                                      generated_tokens=generated, prompt_tokens=prompt.prompt_tokens)
                payload = GenerateResponse(model_name=model, id=request_id, text_output=event.text, details=details)
                yield sse(payload.model_dump_json(exclude_none=True))
        except Exception as exc:  # the 200 is sent: report the failure as a last event
            error = to_serve_error(exc)
            request.state.error = error.message
            yield sse(ErrorResponse(error=error.message).model_dump_json())
        finally:
            group.cancel()
            request.state.completion_tokens = generated


def render_error(request: Request, error: ServeError) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=error.message).model_dump(), status_code=error.status_code)
