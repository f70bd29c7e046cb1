"""Triton generate: ``text_input`` + ``parameters`` -> engine -> ``text_output`` (streamed per token); the KServe
v2 ``infer`` call is the same generation with its input tensors mapped onto a generate body."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse

from ... import __version__
from ...engine import RequestGroup
from ..errors import InvalidRequestError, ServeError
from ..http import EventStreamResponse, in_band_errors, sse
from ..messages import completion_prompt
from ..service import GenerationService, PreparedPrompt, Requested
from .protocol import (
    DEFAULT_MAX_NEW_TOKENS,
    KSERVE_INPUTS,
    KSERVE_INTEGER_TYPES,
    Details,
    ErrorResponse,
    GenerateResponse,
    InferRequest,
    InferResponse,
    InferTensor,
    ModelMetadata,
    OutputTensor,
    ServerMetadata,
    TensorMetadata,
    TritonGenerateRequest,
)

PROTOCOL = "triton"


@dataclass
class _Run:
    """One queued request: its group, prompt, id, and when it was queued (perf_counter, for perf_stat)."""

    group: RequestGroup
    prompt: PreparedPrompt
    request_id: str
    queued: float


class TritonServing:
    def __init__(self, service: GenerationService) -> None:
        self.service = service

    async def start(self, model: str, body: TritonGenerateRequest, request: Request) -> _Run:
        service = self.service
        adapter = service.adapter_for(model, body.parameters.adapter_id, model_param="model (in the URL path)",
                                      adapter_param="parameters.adapter_id")
        max_tokens, param = body.requested_max_tokens
        requested = Requested(max_tokens=max_tokens, max_tokens_param=param, default_max_tokens=DEFAULT_MAX_NEW_TOKENS,
                              seed=body.parameters.seed, seed_param="parameters.seed")
        prompt = await service.prepare(completion_prompt(body.text_input, "text_input"), requested,
                                       template=body.parameters.template, template_param="parameters.template")
        queued = time.perf_counter()
        group = service.submit(prompt, body.parameters.to_sampling_params(prompt.max_new_tokens), protocol=PROTOCOL,
                               adapter=adapter)
        request.state.prompt_tokens = prompt.prompt_tokens
        return _Run(group, prompt, body.id or uuid.uuid4().hex, queued)

    async def generate(self, model: str, body: TritonGenerateRequest, request: Request) -> GenerateResponse:
        run = await self.start(model, body, request)
        completion = (await self.service.collect(run.group))[0]
        request.state.completion_tokens = completion.completion_tokens
        details = _details(body, run, completion.finish_reason, completion.token_ids, completion.seconds)
        return GenerateResponse(model_name=model, id=run.request_id, text_output=completion.text, details=details)

    async def generate_stream(self, model: str, body: TritonGenerateRequest, request: Request) -> EventStreamResponse:
        run = await self.start(model, body, request)
        return EventStreamResponse(in_band_errors(
            request, run.group, self._events(model, body, run),
            lambda error: sse(ErrorResponse(error=error.message).model_dump_json())))

    async def _events(self, model: str, body: TritonGenerateRequest, run: _Run) -> AsyncIterator[str]:
        token_ids: list[int] = []
        seconds: list[float] = []
        async for _, event in run.group.events():
            if event.token_id is not None:
                token_ids.append(event.token_id)
                seconds.append(event.seconds)
            details = _details(body, run, event.finish_reason, token_ids, seconds) if event.finished else None
            payload = GenerateResponse(model_name=model, id=run.request_id, text_output=event.text, details=details)
            yield sse(payload.model_dump_json(exclude_none=True))


class KServe:
    """The KServe v2 inference protocol over :class:`TritonServing` (metadata, readiness, ``infer``)."""

    def __init__(self, triton: TritonServing) -> None:
        self.triton = triton

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(version=__version__)

    def model_metadata(self, model: str) -> ModelMetadata:
        self.triton.service.check_model(model, param="model (in the URL path)")
        inputs = [TensorMetadata(name=name, datatype=datatype, shape=[1]) for name, datatype in KSERVE_INPUTS.items()]
        return ModelMetadata(name=model, inputs=inputs,
                             outputs=[TensorMetadata(name="text_output", datatype="BYTES", shape=[1])])

    def model_config(self, model: str) -> dict[str, object]:
        """Triton's model configuration (what ``tritonclient``'s ``get_model_config`` reads), in its JSON form."""
        self.triton.service.check_model(model, param="model (in the URL path)")
        types = {"BYTES": "TYPE_STRING", "INT32": "TYPE_INT32"}
        inputs = [{"name": name, "data_type": types.get(datatype, f"TYPE_{datatype}"), "dims": [1],
                   "optional": name != "text_input"} for name, datatype in KSERVE_INPUTS.items()]
        return {"name": model, "platform": "coglens", "max_batch_size": 0, "input": inputs,
                "output": [{"name": "text_output", "data_type": "TYPE_STRING", "dims": [1]}],
                "model_transaction_policy": {"decoupled": False}}

    async def infer(self, model: str, body: InferRequest, request: Request) -> InferResponse:
        values = {tensor.name: _one_value(tensor, f"inputs[{i}]") for i, tensor in enumerate(body.inputs)}
        if "text_input" not in values:
            raise InvalidRequestError("inputs: the text_input tensor (BYTES, shape [1]) is required", param="inputs")
        generate = TritonGenerateRequest.model_validate(
            {"id": body.id, "text_input": values["text_input"], "max_tokens": values.get("max_tokens"),
             "parameters": body.parameters})
        answer = await self.triton.generate(model, generate, request)
        output = OutputTensor(name="text_output", datatype="BYTES", shape=[1], data=[answer.text_output])
        return InferResponse(model_name=model, id=answer.id, outputs=[output])


def _one_value(tensor: InferTensor, where: str) -> object:
    """The single element of a known input tensor of the right datatype (data may be nested, row-major)."""
    datatype = KSERVE_INPUTS.get(tensor.name)
    if datatype is None:
        raise InvalidRequestError(f"{where}.name: unknown input {tensor.name!r}; this model takes "
                                  f"{', '.join(KSERVE_INPUTS)}", param=f"{where}.name")
    allowed = {"BYTES"} if datatype == "BYTES" else KSERVE_INTEGER_TYPES
    if tensor.datatype not in allowed:
        raise InvalidRequestError(f"{where}.datatype: {tensor.name} must be {datatype}, got {tensor.datatype!r}",
                                  param=f"{where}.datatype")
    data = list(tensor.data)
    while data and all(isinstance(item, list) for item in data):
        data = [value for item in data for value in item]
    if len(data) != 1 or math.prod(tensor.shape) != 1:
        raise InvalidRequestError(f"{where}: {tensor.name} takes one element (shape [1]), got shape {tensor.shape} "
                                  f"with {len(data)} element(s)", param=f"{where}.data")
    value = data[0]
    text = datatype == "BYTES"
    if not (isinstance(value, str) if text else isinstance(value, int) and not isinstance(value, bool)):
        raise InvalidRequestError(f"{where}.data: {tensor.name} must hold {'a string' if text else 'an integer'}, "
                                  f"got {value!r}", param=f"{where}.data")
    return value


def _details(body: TritonGenerateRequest, run: _Run, reason: str | None, token_ids: list[int],
             seconds: list[float]) -> Details | None:
    """``details`` when asked for by ``details`` or ``perf_stat`` (timing only with ``perf_stat``)."""
    parameters = body.parameters
    if not (parameters.details or parameters.perf_stat):
        return None
    details = Details(finish_reason="length" if reason == "length" else "stop", generated_tokens=len(token_ids),
                      prompt_tokens=run.prompt.prompt_tokens)
    if parameters.perf_stat:
        ms = [round((now - before) * 1000, 3) for before, now in zip([run.queued, *seconds], seconds, strict=False)]
        details.first_token_ms = ms[0] if ms else None
        details.perf_stat = list(zip(token_ids, ms, strict=True))
    return details


def render_error(request: Request, error: ServeError) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=error.message).model_dump(), status_code=error.status_code)
