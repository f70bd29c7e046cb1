"""TGI: ``inputs`` + ``parameters`` -> engine -> ``generated_text`` (+ ``details``), or token events."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse

from ...engine import RequestGroup
from ..errors import ServeError, to_serve_error
from ..http import EventStreamResponse, sse
from ..messages import completion_prompt
from ..service import Completion, GenerationService, PreparedPrompt
from .protocol import (
    DEFAULT_MAX_NEW_TOKENS,
    Details,
    ErrorResponse,
    GenerateResponse,
    StreamDetails,
    StreamResponse,
    TGIGenerateRequest,
    Token,
)

PROTOCOL = "tgi"
_ERROR_TYPES = {"overloaded": "overloaded", "internal": "generation", "timeout": "generation",
                "unavailable": "generation", "authentication": "authentication", "not_found": "not_found"}


class TGIServing:
    def __init__(self, service: GenerationService) -> None:
        self.service = service

    async def start(self, body: TGIGenerateRequest, request: Request) -> tuple[RequestGroup, PreparedPrompt]:
        """Validate, prepare and queue ``body`` (every user error surfaces here, before any streaming)."""
        service = self.service
        parameters = body.parameters
        prompt = await service.prepare(completion_prompt(body.inputs, "inputs"), template=parameters.template,
                                       template_param="parameters.template")
        requested = parameters.max_new_tokens or min(DEFAULT_MAX_NEW_TOKENS, service.fit_max_tokens(
            prompt, None, param="parameters.max_new_tokens"))
        max_new = service.fit_max_tokens(prompt, requested, param="parameters.max_new_tokens")
        group = service.submit(prompt, parameters.to_sampling_params(max_new), protocol=PROTOCOL)
        request.state.prompt_tokens = prompt.prompt_tokens
        return group, prompt

    async def generate(self, body: TGIGenerateRequest, request: Request) -> GenerateResponse:
        group, prompt = await self.start(body, request)
        completion = (await self.service.collect(group))[0]
        request.state.completion_tokens = completion.completion_tokens
        text = prompt.text + completion.text if body.parameters.return_full_text else completion.text
        details = self._details(body, completion) if body.parameters.details else None
        return GenerateResponse(generated_text=text, details=details)

    async def generate_stream(self, body: TGIGenerateRequest, request: Request) -> EventStreamResponse:
        group, prompt = await self.start(body, request)
        return EventStreamResponse(self._events(body, group, prompt, request))

    async def _events(self, body: TGIGenerateRequest, group: RequestGroup, prompt: PreparedPrompt,
                      request: Request) -> AsyncIterator[str]:
        parameters = body.parameters
        pieces: list[str] = []
        try:
            async for _, event in group.events():
                pieces.append(event.text)
                final = event.finish_reason is not None
                full = (prompt.text if parameters.return_full_text else "") + "".join(pieces)
                details = StreamDetails(finish_reason=self._finish(event.finish_reason, event.token_id),
                                        generated_tokens=event.index + 1, input_length=prompt.prompt_tokens,
                                        seed=parameters.seed) if final and parameters.details else None
                payload = StreamResponse(index=event.index, token=self._token(event.token_id, event.text,
                                                                              event.logprob),
                                         generated_text=full if final else None, details=details)
                yield sse(payload.model_dump_json())
        except Exception as exc:  # the 200 is sent: TGI reports the failure as a last event
            error = to_serve_error(exc)
            request.state.error = error.message
            yield sse(error_body(error).model_dump_json())
        finally:
            group.cancel()
            request.state.completion_tokens = len(pieces)

    def _details(self, body: TGIGenerateRequest, completion: Completion) -> Details:
        triples = zip(completion.token_ids, completion.pieces, completion.logprobs, strict=True)
        tokens = [self._token(token_id, piece, logprob) for token_id, piece, logprob in triples]
        last = completion.token_ids[-1] if completion.token_ids else None
        return Details(finish_reason=self._finish(completion.finish_reason, last),
                       generated_tokens=completion.completion_tokens, seed=body.parameters.seed, tokens=tokens)

    def _token(self, token_id: int | None, text: str, logprob: float | None) -> Token:
        token_id = -1 if token_id is None else token_id
        special = token_id in self.service.special_ids
        return Token(id=token_id, text=text, logprob=float(logprob or 0.0), special=special)

    def _finish(self, reason: str | None, last_token: int | None) -> str:
        if reason == "length":
            return "length"
        return "eos_token" if self.service.stop_kind(last_token) == "eos" else "stop_sequence"


def error_body(error: ServeError) -> ErrorResponse:
    return ErrorResponse(error=error.message, error_type=_ERROR_TYPES.get(error.kind, "validation"))


def render_error(request: Request, error: ServeError) -> JSONResponse:
    # TGI answers invalid input with 422 Unprocessable Entity.
    status = 422 if error.kind in ("invalid_request", "unsupported", "media_fetch") else error.status_code
    return JSONResponse(error_body(error).model_dump(), status_code=status)
