"""TGI on the wire (pydantic only), as ``huggingface_hub.InferenceClient.text_generation`` speaks it.

``inputs`` may be a string or, as in the MindIE guides, a list of typed parts (``text``, ``image_url``,
``video_url``; a URL may be a plain string or ``{"url": ...}``). Every TGI parameter does what TGI does
(``typical_p``, ``watermark``, ``top_n_tokens``, ``decoder_input_details``, ``best_of``, ``truncate``,
``adapter_id``: a LoRA adapter of ``--adapter NAME=PATH``) except ``grammar``, which is refused by name.
Extension: ``parameters.template`` (``chat``/``vqa``/``base``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ...engine import SamplingParams
from ..wire import AdapterId, ContentPart, Refused, ResponseModel, Seed, StopList, WireModel

DEFAULT_MAX_NEW_TOKENS = 100  # TGI's default
MAX_TOP_N_TOKENS = 5  # TGI's --max-top-n-tokens default
MAX_STOP_SEQUENCES = 4  # TGI's --max-stop-sequences default




class TGIParameters(WireModel):
    max_new_tokens: int | None = Field(default=None, ge=1)
    do_sample: bool | None = None
    temperature: float | None = Field(default=None, gt=0)
    top_k: int | None = Field(default=None, gt=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    typical_p: float | None = Field(default=None, gt=0, lt=1)
    seed: Seed | None = Field(default=None, ge=0)
    stop: StopList = Field(default_factory=list, max_length=MAX_STOP_SEQUENCES)
    details: bool = False
    decoder_input_details: bool = False
    return_full_text: bool = False
    watermark: bool = False
    top_n_tokens: int | None = Field(default=None, ge=0, le=MAX_TOP_N_TOKENS)
    best_of: int | None = Field(default=None, ge=1)
    truncate: int | None = Field(default=None, ge=1)
    template: str | None = None
    adapter_id: AdapterId
    grammar: Refused

    @property
    def sampling(self) -> bool:
        """An explicit ``do_sample`` decides (``false`` is greedy, as MindIE's bodies mean it); without it, TGI's
        rule: sample when any warper is set (temperature != 1, top_k, top_p < 1, typical_p)."""
        if self.do_sample is not None:
            return self.do_sample
        return (self.temperature not in (None, 1.0) or self.top_k is not None
                or self.top_p not in (None, 1.0) or self.typical_p is not None)

    def to_sampling_params(self, max_new_tokens: int) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=max_new_tokens, do_sample=self.sampling,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_k=self.top_k or 0, top_p=1.0 if self.top_p is None else self.top_p,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            frequency_penalty=self.frequency_penalty or 0.0, stop=list(self.stop), seed=self.seed,
            typical_p=1.0 if self.typical_p is None else self.typical_p, watermark=self.watermark,
            top_logprobs=self.top_n_tokens or 0, prompt_logprobs=self.decoder_input_details,
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


class PrefillToken(ResponseModel):
    id: int
    text: str
    logprob: float | None  # null for the first token and for image tokens


class BestOfSequence(ResponseModel):
    generated_text: str
    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None = None
    prefill: list[PrefillToken] = Field(default_factory=list)
    tokens: list[Token]
    top_tokens: list[list[Token]] = Field(default_factory=list)


class Details(ResponseModel):
    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None = None
    prefill: list[PrefillToken] = Field(default_factory=list)
    tokens: list[Token]
    top_tokens: list[list[Token]] = Field(default_factory=list)  # per token, the top_n_tokens most likely
    best_of_sequences: list[BestOfSequence] | None = None


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
    top_tokens: list[Token] = Field(default_factory=list)


class Info(ResponseModel):
    """``GET /info``, the fields TGI's router reports (huggingface_hub's ``get_endpoint_info`` reads it)."""

    model_id: str
    model_sha: str | None = None
    model_dtype: str
    model_device_type: str
    model_pipeline_tag: str | None = "image-text-to-text"
    max_concurrent_requests: int
    max_best_of: int
    max_stop_sequences: int = MAX_STOP_SEQUENCES
    max_input_tokens: int
    max_input_length: int  # the name of max_input_tokens before TGI 2.1
    max_total_tokens: int
    max_top_n_tokens: int = MAX_TOP_N_TOKENS
    validation_workers: int
    max_client_batch_size: int = 1
    router: str = "coglens"
    version: str
    sha: str | None = None
    docker_label: str | None = None


class ErrorResponse(ResponseModel):
    error: str
    error_type: str
