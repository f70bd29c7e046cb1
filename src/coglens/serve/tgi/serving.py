"""TGI: ``inputs`` + ``parameters`` -> engine -> ``generated_text`` (+ ``details``), or token events."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse

from ... import __version__
from ...engine import RequestGroup
from ..errors import InvalidRequestError, ServeError, limit_error
from ..http import EventStreamResponse, in_band_errors, sse
from ..messages import completion_prompt
from ..service import Completion, GenerationService, PreparedPrompt, Requested
from .protocol import (
    DEFAULT_MAX_NEW_TOKENS,
    BestOfSequence,
    Details,
    ErrorResponse,
    GenerateResponse,
    Info,
    PrefillToken,
    StreamDetails,
    StreamResponse,
    TGIGenerateRequest,
    TGIParameters,
    Token,
)

PROTOCOL = "tgi"
_ERROR_TYPES = {"overloaded": "overloaded", "internal": "generation", "timeout": "generation",
                "unavailable": "generation", "authentication": "authentication", "not_found": "not_found"}


class TGIServing:
    def __init__(self, service: GenerationService) -> None:
        self.service = service

    async def start(self, body: TGIGenerateRequest, request: Request, *,
                    stream: bool) -> tuple[RequestGroup, PreparedPrompt]:
        """Validate, prepare and queue ``body`` (every user error surfaces here, before any streaming)."""
        service = self.service
        parameters = body.parameters
        adapter = service.adapter_for(None, parameters.adapter_id, adapter_param="parameters.adapter_id")
        self._check_best_of(parameters, stream=stream)
        if stream and parameters.decoder_input_details:
            raise InvalidRequestError("parameters.decoder_input_details: true is not supported when streaming "
                                      "tokens (as in TGI)", param="parameters.decoder_input_details")
        requested = Requested(max_tokens=parameters.max_new_tokens, max_tokens_param="parameters.max_new_tokens",
                              default_max_tokens=DEFAULT_MAX_NEW_TOKENS, n=parameters.best_of or 1,
                              n_param="parameters.best_of", seed=parameters.seed, seed_param="parameters.seed")
        prompt = await service.prepare(completion_prompt(body.inputs, "inputs"), requested,
                                       template=parameters.template, template_param="parameters.template",
                                       truncate=parameters.truncate, truncate_param="parameters.truncate")
        group = service.submit(prompt, parameters.to_sampling_params(prompt.max_new_tokens),
                               n=parameters.best_of or 1, protocol=PROTOCOL, adapter=adapter)
        request.state.prompt_tokens = prompt.prompt_tokens
        return group, prompt

    def _check_best_of(self, parameters: TGIParameters, *, stream: bool) -> None:
        """TGI's rules: ``best_of`` > 1 samples, unseeded, not streamed, at most ``max_best_of`` (``--max-n``)."""
        best_of, param = parameters.best_of or 1, "parameters.best_of"
        if best_of == 1:
            return
        if best_of > self.service.limits.max_n:
            raise limit_error(f"best_of={best_of}", "max_n", str(self.service.limits.max_n), param=param)
        for broken, why in ((not parameters.sampling, "needs sampling (do_sample or a temperature/top_k/top_p)"),
                            (parameters.seed is not None, "must not be combined with a seed"),
                            (stream, "is not supported when streaming tokens")):
            if broken:
                raise InvalidRequestError(f"{param}={best_of} {why}, as in TGI", param=param)

    async def generate(self, body: TGIGenerateRequest, request: Request) -> GenerateResponse:
        group, prompt = await self.start(body, request, stream=False)
        completions = await self.service.collect(group)
        request.state.completion_tokens = sum(c.completion_tokens for c in completions)
        best, *others = sorted(completions, key=lambda c: -sum(c.logprobs))  # best_of: highest total logprob
        parameters = body.parameters
        details = None
        if parameters.details:
            sequences = [await self._sequence(body, prompt, c) for c in (best, *others)]
            details = Details(**sequences[0].model_dump(exclude={"generated_text"}),
                              best_of_sequences=sequences[1:] or None)
        return GenerateResponse(generated_text=self._text(body, prompt, best.text), details=details)

    def _text(self, body: TGIGenerateRequest, prompt: PreparedPrompt, generated: str) -> str:
        return prompt.text + generated if body.parameters.return_full_text else generated

    async def _sequence(self, body: TGIGenerateRequest, prompt: PreparedPrompt,
                        completion: Completion) -> BestOfSequence:
        """One choice's details: its tokens, their top tokens, and (``decoder_input_details``) the prompt's."""
        prefill_ids = prompt.input_ids.tolist() if body.parameters.decoder_input_details else []
        alternatives = [i for alts in completion.top_logprobs for i, _ in alts]
        texts = iter(await self.service.token_texts([*prefill_ids, *alternatives]))
        prefill_logprobs = completion.prompt_logprobs or [None] * len(prefill_ids)
        prefill = [PrefillToken(id=i, text=next(texts), logprob=lp)
                   for i, lp in zip(prefill_ids, prefill_logprobs, strict=True)]
        triples = zip(completion.token_ids, completion.pieces, completion.logprobs, strict=True)
        tokens = [self._token(token_id, piece, logprob) for token_id, piece, logprob in triples]
        top = [[self._token(i, next(texts), lp) for i, lp in alts] for alts in completion.top_logprobs]
        last = completion.token_ids[-1] if completion.token_ids else None
        return BestOfSequence(generated_text=self._text(body, prompt, completion.text),
                              finish_reason=self._finish(completion.finish_reason, last),
                              generated_tokens=completion.completion_tokens, seed=body.parameters.seed,
                              prefill=prefill, tokens=tokens, top_tokens=top if body.parameters.top_n_tokens else [])

    async def generate_stream(self, body: TGIGenerateRequest, request: Request) -> EventStreamResponse:
        group, prompt = await self.start(body, request, stream=True)
        return EventStreamResponse(in_band_errors(request, group, self._events(body, group, prompt),
                                                  lambda error: sse(error_body(error).model_dump_json())))

    async def _events(self, body: TGIGenerateRequest, group: RequestGroup,
                      prompt: PreparedPrompt) -> AsyncIterator[str]:
        parameters = body.parameters
        pieces: list[str] = []
        async for _, event in group.events():
            pieces.append(event.text)
            final = event.finish_reason is not None
            details = StreamDetails(finish_reason=self._finish(event.finish_reason, event.token_id),
                                    generated_tokens=event.index + 1, input_length=prompt.prompt_tokens,
                                    seed=parameters.seed) if final and parameters.details else None
            alternatives = list(event.top_logprobs) if event.token_id is not None else []
            texts = await self.service.token_texts([i for i, _ in alternatives]) if alternatives else []
            payload = StreamResponse(
                index=event.index, token=self._token(event.token_id, event.text, event.logprob),
                generated_text=self._text(body, prompt, "".join(pieces)) if final else None, details=details,
                top_tokens=[self._token(i, text, lp) for (i, lp), text in zip(alternatives, texts, strict=True)])
            yield sse(payload.model_dump_json())

    def info(self) -> Info:
        """What TGI's ``GET /info`` reports, from this server's engine and limits."""
        limits, engine = self.service.limits, self.service.scheduler.engine
        context = engine.max_positions
        return Info(model_id=self.service.model_name, model_dtype=str(engine.model.dtype),
                    model_device_type=engine.device.type, max_concurrent_requests=limits.max_queue,
                    max_best_of=limits.max_n, max_input_tokens=min(limits.max_prompt_tokens, context - 1),
                    max_input_length=min(limits.max_prompt_tokens, context - 1),
                    max_total_tokens=context, validation_workers=1, version=__version__)

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
