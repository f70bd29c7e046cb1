"""Triton's generate extension and the KServe v2 inference protocol on the wire (pydantic only).

Generate takes the fields the MindIE guides send.

``text_input`` is a string or a list of typed parts; sampling settings live in ``parameters``
(``max_new_tokens``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``repetition_penalty``, ``seed``,
``stop``, ``details``, ``typical_p``, ``watermark``, ``perf_stat``); TensorRT-LLM's top-level ``max_tokens`` is
accepted too. Sampling happens only with ``do_sample: true``; otherwise decoding is greedy. MindIE's
``batch_size`` is accepted and has no effect on one request's answer; other unknown fields are refused.
Extensions: ``parameters.template``, and ``parameters.adapter_id`` (a LoRA adapter of ``--adapter NAME=PATH``;
the adapter's name in the URL path picks it too).

``perf_stat: true`` adds timing to ``details`` (of the answer, or of a stream's last event):
``first_token_ms`` (queue + prefill until the first token) and ``perf_stat``, one ``[token_id, ms]`` per
generated token, ``ms`` the time since the previous token (the first one's is ``first_token_ms``).

KServe ``infer`` takes a ``text_input`` BYTES tensor of one element (and optionally ``max_tokens`` INT32); sampling
settings go in the request's ``parameters``, as in generate. ``text_output`` comes back as a JSON BYTES tensor.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ...engine import SamplingParams
from ..wire import AdapterId, ContentPart, Ignored, ResponseModel, Seed, StopList, WireModel

DEFAULT_MAX_NEW_TOKENS = 256
MODEL_VERSION = "1"


class TritonParameters(WireModel):
    max_new_tokens: int | None = Field(default=None, ge=1)
    do_sample: bool = False
    temperature: float = Field(default=1.0, ge=0)
    top_k: int = Field(default=0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    typical_p: float = Field(default=1.0, gt=0, le=1)
    repetition_penalty: float = Field(default=1.0, gt=0)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    seed: Seed | None = None
    stop: StopList = Field(default_factory=list)
    ignore_eos: bool = False
    watermark: bool = False
    details: bool = False
    perf_stat: bool = False
    batch_size: Ignored
    template: str | None = None
    adapter_id: AdapterId

    def to_sampling_params(self, max_new_tokens: int) -> SamplingParams:
        return SamplingParams.from_temperature(
            self.temperature, do_sample=self.do_sample, max_new_tokens=max_new_tokens, top_k=self.top_k,
            top_p=self.top_p, repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, stop=list(self.stop), ignore_eos=self.ignore_eos,
            seed=self.seed, typical_p=self.typical_p, watermark=self.watermark,
        )


class TritonGenerateRequest(WireModel):
    id: str | None = None
    text_input: str | list[ContentPart]
    max_tokens: int | None = Field(default=None, ge=1)
    parameters: TritonParameters = Field(default_factory=TritonParameters)

    @property
    def requested_max_tokens(self) -> tuple[int | None, str]:
        if self.parameters.max_new_tokens is not None:
            return self.parameters.max_new_tokens, "parameters.max_new_tokens"
        return self.max_tokens, "max_tokens"


class Details(ResponseModel):
    finish_reason: Literal["length", "stop"]
    generated_tokens: int
    prompt_tokens: int
    first_token_ms: float | None = None  # with perf_stat
    perf_stat: list[tuple[int, float]] | None = None  # with perf_stat: [token_id, ms since the previous token]


class GenerateResponse(ResponseModel):
    """One answer, or one event of a stream (``text_output`` is then the new text of that token)."""

    model_name: str
    model_version: str = MODEL_VERSION
    id: str
    text_output: str
    details: Details | None = None


class ErrorResponse(ResponseModel):
    error: str


# --- KServe v2 inference protocol (``/v2/models/{model}/infer``) ---------------------------------------------

KSERVE_INPUTS = {"text_input": "BYTES", "max_tokens": "INT32"}  # name -> datatype; text_input is required
KSERVE_INTEGER_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}


class InferTensor(WireModel):
    """An input tensor in JSON (the binary-data extension is refused: see ``router``)."""

    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class InferOutputRequest(WireModel):
    name: Literal["text_output"]
    parameters: dict[str, Any] | None = None  # binary_data: outputs are always JSON, which tritonclient reads too


class InferParameters(TritonParameters):
    """Request-level parameters: the generate extension's, plus tritonclient's ``binary_data_output``."""

    binary_data_output: bool = False


class InferRequest(WireModel):
    id: str | None = None
    inputs: list[InferTensor]
    outputs: list[InferOutputRequest] | None = None
    parameters: InferParameters = Field(default_factory=InferParameters)


class TensorMetadata(ResponseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(ResponseModel):
    name: str
    versions: list[str] = Field(default_factory=lambda: [MODEL_VERSION])
    platform: str = "coglens"
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(ResponseModel):
    name: str = "coglens"
    version: str
    extensions: list[str] = Field(default_factory=lambda: ["generate"])


class OutputTensor(ResponseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[str]


class InferResponse(ResponseModel):
    model_name: str
    model_version: str = MODEL_VERSION
    id: str
    outputs: list[OutputTensor]
