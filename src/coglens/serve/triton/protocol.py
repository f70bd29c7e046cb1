"""Triton's generate extension on the wire (pydantic only), with the fields the MindIE guides send.

``text_input`` is a string or a list of typed parts; sampling settings live in ``parameters``
(``max_new_tokens``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``repetition_penalty``, ``seed``,
``stop``, ``details``); TensorRT-LLM's top-level ``max_tokens`` is accepted too. Sampling happens only with
``do_sample: true``; otherwise decoding is greedy. Unknown parameters (``batch_size``, ``typical_p``,
``watermark``, ``perf_stat``, ...) are ignored. Extension: ``parameters.template``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ...engine import SamplingParams
from ..wire import ContentPart, ResponseModel, StopList, WireModel

DEFAULT_MAX_NEW_TOKENS = 256
MODEL_VERSION = "1"




class TritonParameters(WireModel):
    max_new_tokens: int | None = Field(default=None, ge=1)
    do_sample: bool = False
    temperature: float = Field(default=1.0, ge=0)
    top_k: int = Field(default=0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    repetition_penalty: float = Field(default=1.0, gt=0)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    seed: int | None = None
    stop: StopList = Field(default_factory=list)
    ignore_eos: bool = False
    details: bool = False
    template: str | None = None

    def to_sampling_params(self, max_new_tokens: int) -> SamplingParams:
        return SamplingParams.from_temperature(
            self.temperature, do_sample=self.do_sample, max_new_tokens=max_new_tokens, top_k=self.top_k,
            top_p=self.top_p, repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, stop=list(self.stop), ignore_eos=self.ignore_eos,
            seed=self.seed,
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


class GenerateResponse(ResponseModel):
    """One answer, or one event of a stream (``text_output`` is then the new text of that token)."""

    model_name: str
    model_version: str = MODEL_VERSION
    id: str
    text_output: str
    details: Details | None = None


class ErrorResponse(ResponseModel):
    error: str
