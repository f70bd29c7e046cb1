"""OpenAI's legacy ``/v1/completions``: a text prompt continued as is (the ``base`` template unless ``template``
says otherwise) -> ``text_completion`` (or its SSE chunks).

``logprobs: k`` (0..5) gives the legacy parallel lists ``tokens``/``token_logprobs``/``top_logprobs``/
``text_offset``; with ``echo`` the prompt's text tokens come first (the first one's logprob null, their
``top_logprobs`` null). ``best_of`` generates that many choices and returns the ``n`` of highest total logprob.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse

from ...engine import RequestGroup
from ..errors import InvalidRequestError
from ..http import EventStreamResponse, in_band_errors, now, sse
from ..messages import completion_prompt
from ..service import Completion, GenerationService, PreparedPrompt, Requested
from .protocol import CompletionChoice, CompletionRequest, CompletionResponse, LegacyLogprobs, Usage
from .serving import PROTOCOL, check_stream_options, error_event, finish_reason, usage_of

BASE_TEMPLATE = "base"


class OpenAIServingCompletion:
    def __init__(self, service: GenerationService) -> None:
        self.service = service

    async def create(self, body: CompletionRequest, request: Request) -> JSONResponse | EventStreamResponse:
        service = self.service
        adapter = service.adapter_for(body.model, body.adapter_id)
        check_stream_options(body.stream, body.stream_options)
        best_of = body.best_of or body.n
        if best_of < body.n:
            raise InvalidRequestError(f"best_of={best_of} must be >= n={body.n}", param="best_of")
        if body.stream and best_of > body.n:
            raise InvalidRequestError("best_of > n cannot be streamed: the best choices are known only at the end",
                                      param="best_of")
        requested = Requested(max_tokens=body.max_tokens, n=best_of, n_param="best_of" if body.best_of else "n",
                              seed=body.seed)
        prompt = await service.prepare(completion_prompt(body.prompt, "prompt"), requested,
                                       template=body.template or BASE_TEMPLATE)
        params = body.to_sampling_params(prompt.max_new_tokens)
        group = service.submit(prompt, params, n=best_of, protocol=PROTOCOL, adapter=adapter)
        request.state.prompt_tokens = prompt.prompt_tokens
        answer = CompletionResponse(id=f"cmpl-{uuid.uuid4().hex}", created=now(),
                                    model=adapter or body.model or service.model_name, choices=[])
        if body.stream:
            chunks = self._stream(body, group, prompt, answer)
            return EventStreamResponse(in_band_errors(request, group, chunks, error_event, end=sse("[DONE]")))
        completions = await service.collect(group)
        request.state.completion_tokens = sum(c.completion_tokens for c in completions)
        answer.usage = usage_of(prompt.prompt_tokens, request.state.completion_tokens)
        best = sorted(completions, key=lambda c: -sum(c.logprobs))[: body.n] if best_of > body.n else completions
        answer.choices = [await self._choice(i, body, prompt, c) for i, c in enumerate(best)]
        return JSONResponse(answer.model_dump())

    async def _choice(self, index: int, body: CompletionRequest, prompt: PreparedPrompt,
                      completion: Completion) -> CompletionChoice:
        echoed = prompt.text if body.echo else ""
        logprobs = None
        if body.logprobs is not None:
            logprobs = await self._legacy_logprobs(prompt, completion, echo=body.echo)
        return CompletionChoice(index=index, text=echoed + completion.text, logprobs=logprobs,
                                finish_reason=finish_reason(completion.finish_reason))

    async def _legacy_logprobs(self, prompt: PreparedPrompt, completion: Completion, *, echo: bool,
                               offset: int = 0) -> LegacyLogprobs:
        """The legacy lists for ``completion``'s tokens, after the prompt's text tokens when ``echo``."""
        prompt_ids: list[int] = []
        prompt_logprobs: list[float | None] = []
        if echo:
            special = self.service.special_ids
            per_token = completion.prompt_logprobs or [None] * prompt.prompt_tokens
            pairs = zip(prompt.input_ids.tolist(), prompt.token_type_ids.tolist(), per_token, strict=True)
            kept = [(i, lp) for i, kind, lp in pairs if kind == 0 and i not in special]
            prompt_ids, prompt_logprobs = [i for i, _ in kept], [lp for _, lp in kept]
        alternatives = [i for alts in completion.top_logprobs for i, _ in alts]
        texts = await self.service.token_texts([*prompt_ids, *completion.token_ids, *alternatives])
        count = len(prompt_ids) + completion.completion_tokens
        tokens, alt_texts = texts[:count], iter(texts[count:])
        out = LegacyLogprobs(tokens=tokens, token_logprobs=[*prompt_logprobs, *completion.logprobs],
                             top_logprobs=[None] * len(prompt_ids))
        for alts in completion.top_logprobs:
            out.top_logprobs.append({next(alt_texts): logprob for _, logprob in alts})
        for token in tokens:
            out.text_offset.append(offset)
            offset += len(token)
        return out

    async def _stream(self, body: CompletionRequest, group: RequestGroup, prompt: PreparedPrompt,
                      answer: CompletionResponse) -> AsyncIterator[str]:
        """One chunk per token; with ``echo`` a choice's first chunk starts with the prompt (and its logprobs)."""
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
            payload = answer.model_copy(update={"choices": choices, "usage": usage}).model_dump()
            if not include_usage:  # "usage": null on every chunk only when the client asked for usage
                del payload["usage"]
            return sse(json.dumps(payload, ensure_ascii=False))

        offsets = [0] * len(group.request_ids)
        started: set[int] = set()
        async for index, event in group.events():
            echo = body.echo and index not in started
            started.add(index)
            text = (prompt.text if echo else "") + event.text
            logprobs = None
            if body.logprobs is not None and (echo or event.token_id is not None):
                logprobs = await self._legacy_logprobs(prompt, Completion.of([event], prompt.prompt_tokens),
                                                       echo=echo, offset=offsets[index])
            offsets[index] += len(text)
            reason = finish_reason(event.finish_reason) if event.finish_reason else None
            if text or logprobs is not None or reason is not None:
                yield chunk([CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=reason)])
        if include_usage:
            yield chunk([], usage_of(prompt.prompt_tokens, group.generated_tokens))
