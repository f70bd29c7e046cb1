"""vLLM ``/generate``: prompt -> engine -> ``{"text": [prompt + output, ...]}``; streamed as cumulative
newline-delimited JSON, exactly like vLLM's api_server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse

from ...engine import RequestGroup
from ..errors import ServeError
from ..http import EventStreamResponse, in_band_errors
from ..messages import completion_prompt
from ..service import GenerationService, PreparedPrompt, Requested
from .protocol import ErrorInfo, ErrorResponse, GenerateResponse, VLLMGenerateRequest

PROTOCOL = "vllm"
NDJSON = "application/x-ndjson"


class VLLMServing:
    def __init__(self, service: GenerationService) -> None:
        self.service = service

    async def start(self, body: VLLMGenerateRequest, request: Request) -> tuple[RequestGroup, PreparedPrompt]:
        service = self.service
        by_name = body.model if body.model in service.adapter_names else None  # other names: the one model
        adapter = service.adapter_for(by_name, body.adapter_id)
        prompt = await service.prepare(completion_prompt(body.prompt, "prompt"),
                                       Requested(max_tokens=body.max_tokens, n=body.n, seed=body.seed),
                                       template=body.template)
        group = service.submit(prompt, body.to_sampling_params(prompt.max_new_tokens), n=body.n, protocol=PROTOCOL,
                               adapter=adapter)
        request.state.prompt_tokens = prompt.prompt_tokens
        return group, prompt

    async def generate(self, body: VLLMGenerateRequest, request: Request) -> GenerateResponse:
        group, prompt = await self.start(body, request)
        completions = await self.service.collect(group)
        request.state.completion_tokens = sum(c.completion_tokens for c in completions)
        return GenerateResponse(text=[prompt.text + c.text for c in completions])

    async def generate_stream(self, body: VLLMGenerateRequest, request: Request) -> EventStreamResponse:
        group, prompt = await self.start(body, request)
        return EventStreamResponse(in_band_errors(request, group, self._lines(group, prompt),
                                                  lambda error: error_body(error).model_dump_json() + "\n"),
                                   media_type=NDJSON)

    async def _lines(self, group: RequestGroup, prompt: PreparedPrompt) -> AsyncIterator[str]:
        texts = [prompt.text] * len(group.request_ids)
        async for index, event in group.events():
            texts[index] += event.text
            yield json.dumps(GenerateResponse(text=texts).model_dump(), ensure_ascii=False) + "\n"


def error_body(error: ServeError) -> ErrorResponse:
    kind = ("NotFoundError" if error.status_code == 404 else "BadRequestError" if error.status_code < 500
            else "InternalServerError")  # vLLM's names
    return ErrorResponse(error=ErrorInfo(message=error.message, type=kind, param=error.param, code=error.status_code))


def render_error(request: Request, error: ServeError) -> JSONResponse:
    return JSONResponse(error_body(error).model_dump(), status_code=error.status_code)
