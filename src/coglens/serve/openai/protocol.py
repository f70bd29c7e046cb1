"""OpenAI chat completions on the wire (pydantic only): requests, responses, stream chunks, errors.

Extensions beyond OpenAI's fields, as vLLM and MindIE accept them: ``top_k``, ``repetition_penalty``,
``do_sample`` (False forces greedy decoding whatever the temperature), ``ignore_eos``, ``template``
(``chat``/``vqa``/``base``) and ``video_url`` content parts. A ``video_url`` or ``image_url`` may be a plain
string or ``{"url": ...}``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ...engine import SamplingParams
from ..wire import ContentPart, ResponseModel, StopList, WireModel


class ChatMessage(WireModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(WireModel):
    include_usage: bool = False


class ChatCompletionRequest(WireModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)
    stop: StopList = Field(default_factory=list)
    seed: int | None = None
    n: int = Field(default=1, ge=1)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    repetition_penalty: float = Field(default=1.0, gt=0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    do_sample: bool | None = None
    ignore_eos: bool = False
    template: str | None = None
    user: str | None = None

    @property
    def requested_max_tokens(self) -> tuple[int | None, str]:
        """The token budget asked for and the field it came from (``max_completion_tokens`` wins)."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"

    def to_sampling_params(self, max_new_tokens: int) -> SamplingParams:
        return SamplingParams.from_temperature(
            1.0 if self.temperature is None else self.temperature,  # OpenAI's default samples
            do_sample=self.do_sample, max_new_tokens=max_new_tokens,
            top_k=max(self.top_k or 0, 0), top_p=1.0 if self.top_p is None else self.top_p,
            repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, stop=list(self.stop or []), ignore_eos=self.ignore_eos,
            seed=self.seed,
        )


class Usage(ResponseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(ResponseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(ResponseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletionResponse(ResponseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(ResponseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(ResponseModel):
    index: int
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(ResponseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(ResponseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "coglens"


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(ResponseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(ResponseModel):
    error: ErrorInfo
