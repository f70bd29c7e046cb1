"""OpenAI chat and legacy completions on the wire (pydantic only): requests, responses, stream chunks, errors.

Extensions beyond OpenAI's fields, as vLLM and MindIE accept them: ``top_k``, ``repetition_penalty``,
``do_sample`` (False forces greedy decoding whatever the temperature), ``ignore_eos``, ``template``
(``chat``/``vqa``/``base``) and ``video_url`` content parts. A ``video_url`` or ``image_url`` may be a plain
string or ``{"url": ...}``. Tools, structured output and ``logit_bias`` are refused (see ``wire.REFUSED``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

from ...engine import SamplingParams
from ..wire import AdapterId, ContentPart, Ignored, Refused, ResponseModel, Seed, StopList, WireModel

MAX_TOP_LOGPROBS = 20  # OpenAI's bound on chat top_logprobs
MAX_LEGACY_LOGPROBS = 5  # OpenAI's bound on the completions endpoint's logprobs
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens of /v1/completions


class ChatMessage(WireModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(WireModel):
    include_usage: bool = False


class _Unsupported(WireModel):
    """Fields of OpenAI's request bodies this server refuses or ignores (see ``wire.REFUSED``/``wire.IGNORED``)."""

    logit_bias: Refused
    user: str | None = None
    metadata: Ignored
    store: Ignored
    service_tier: Ignored


class ChatCompletionRequest(_Unsupported):
    model: str | None = None  # the served model, or a loaded adapter's name
    adapter_id: AdapterId
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)
    stop: StopList = Field(default_factory=list)
    seed: Seed | None = None
    n: int = Field(default=1, ge=1)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    repetition_penalty: float = Field(default=1.0, gt=0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    do_sample: bool | None = None
    ignore_eos: bool = False
    template: str | None = None
    tools: Refused
    tool_choice: Refused
    functions: Refused
    function_call: Refused
    parallel_tool_calls: Refused
    response_format: Refused
    modalities: Refused
    audio: Refused
    prediction: Refused
    reasoning_effort: Refused
    web_search_options: Refused

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
            seed=self.seed, top_logprobs=self.top_logprobs or 0,
        )


def _one_text_prompt(value: Any) -> Any:
    """A prompt string, or a list of exactly one (batched and token-id prompts are refused by name)."""
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise PydanticCustomError("token_prompt", "token-id prompts are not supported; send the prompt as text "
                                      "(a string, or a list of one string)")
        if len(value) != 1:
            raise PydanticCustomError("prompt_count", "send one prompt per request ({count} given)",
                                      {"count": len(value)})
        return value[0]
    return value


class CompletionRequest(_Unsupported):
    """OpenAI's legacy ``/v1/completions``: the prompt is continued as is (the ``base`` template)."""

    model: str | None = None  # the served model, or a loaded adapter's name
    adapter_id: AdapterId
    prompt: Annotated[str, BeforeValidator(_one_text_prompt)]
    max_tokens: int | None = Field(default=DEFAULT_COMPLETION_TOKENS, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=-1)
    n: int = Field(default=1, ge=1)
    best_of: int | None = Field(default=None, ge=1)
    stop: StopList = Field(default_factory=list)
    seed: Seed | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LEGACY_LOGPROBS)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    repetition_penalty: float = Field(default=1.0, gt=0)
    ignore_eos: bool = False
    template: str | None = None
    suffix: Refused

    def to_sampling_params(self, max_new_tokens: int) -> SamplingParams:
        return SamplingParams.from_temperature(
            self.temperature, max_new_tokens=max_new_tokens, top_k=max(self.top_k, 0), top_p=self.top_p,
            repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, stop=list(self.stop), ignore_eos=self.ignore_eos,
            seed=self.seed, top_logprobs=self.logprobs or 0, prompt_logprobs=self.echo and self.logprobs is not None,
        )


class Usage(ResponseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(ResponseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: list[int] | None  # None for a token that is only part of a character (its text would be U+FFFD)


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(ResponseModel):
    content: list[TokenLogprob]
    refusal: None = None


class Choice(ResponseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: ChoiceLogprobs | None = None


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
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(ResponseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class LegacyLogprobs(ResponseModel):
    """The completions endpoint's logprobs: parallel lists, one entry per token (prompt tokens first with echo)."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(ResponseModel):
    index: int
    text: str
    logprobs: LegacyLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class CompletionResponse(ResponseModel):
    """A whole answer, or (``stream``) one chunk of it: the object is ``text_completion`` for both, as OpenAI's."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(ResponseModel):
    """A served model; an adapter's card names its base model as ``parent`` (as vLLM lists LoRA adapters)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "coglens"
    parent: str | None = None


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
