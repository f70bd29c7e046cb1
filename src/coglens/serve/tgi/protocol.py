"""TGI on the wire (pydantic only), as ``huggingface_hub.InferenceClient.text_generation`` speaks it.

``inputs`` may be a string or, as in the MindIE guides, a list of typed parts (``text``, ``image_url``,
``video_url``; a URL may be a plain string or ``{"url": ...}``). TGIParameters TGI has and we do not use
(``typical_p``, ``truncate``, ``watermark``, ``adapter_id``, ``best_of``, ``top_n_tokens``, ``grammar``) are
accepted and ignored. Extension: ``parameters.template`` (``chat``/``vqa``/``base``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ...engine import SamplingParams
from ..wire import ContentPart, ResponseModel, StopList, WireModel

DEFAULT_MAX_NEW_TOKENS = 100  # TGI's default




class TGIParameters(WireModel):
    max_new_tokens: int | None = Field(default=None, ge=1)
    do_sample: bool = False
    temperature: float | None = Field(default=None, gt=0)
    top_k: int | None = Field(default=None, gt=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = Field(default=None, ge=0)
    stop: StopList = Field(default_factory=list)
    details: bool = False
    decoder_input_details: bool = False
    return_full_text: bool = False
    template: str | None = None

    @property
    def sampling(self) -> bool:
        """TGI samples when asked to, or when any warper is set (temperature != 1, top_k, top_p < 1)."""
        warped = (self.temperature not in (None, 1.0) or self.top_k is not None
                  or self.top_p not in (None, 1.0))
        return self.do_sample or warped

    def to_sampling_params(self, max_new_tokens: int) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=max_new_tokens, do_sample=self.sampling,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_k=self.top_k or 0, top_p=1.0 if self.top_p is None else self.top_p,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            frequency_penalty=self.frequency_penalty or 0.0, stop=list(self.stop), seed=self.seed,
        )


class TGIGenerateRequest(WireModel):
    inputs: str | list[ContentPart]
    parameters: TGIParameters = Field(default_factory=TGIParameters)
    stream: bool = False


FinishReason = Literal["length", "eos_token", "stop_sequence"]


class Token(ResponseModel):
    id: int
    text: str
    logprob: float
    special: bool


class Details(ResponseModel):
    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None = None
    prefill: list[Token] = Field(default_factory=list)
    tokens: list[Token]
    top_tokens: None = None
    best_of_sequences: None = None


class GenerateResponse(ResponseModel):
    generated_text: str
    details: Details | None = None


class StreamDetails(ResponseModel):
    finish_reason: FinishReason
    generated_tokens: int
    input_length: int
    seed: int | None = None


class StreamResponse(ResponseModel):
    index: int
    token: Token
    generated_text: str | None = None
    details: StreamDetails | None = None
    top_tokens: None = None


class ErrorResponse(ResponseModel):
    error: str
    error_type: str
