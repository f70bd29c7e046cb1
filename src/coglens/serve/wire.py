"""The pydantic base of every protocol's request models: strict types, and every field does what it says.

A client that sends a field expects its effect, so a field the server does not implement is an error, never
silently dropped: unknown fields are refused (``extra="forbid"``), and the fields real clients send that we
deliberately do not implement are declared :data:`Refused`, so the 400 says why (see :data:`REFUSED`).
Fields that change nothing in an answer (``user``, ``metadata``, MindIE's ``batch_size``) are declared
:data:`Ignored` (see :data:`IGNORED`). Types are strict: ``true`` is not a number, ``"yes"`` is not a boolean,
and NaN/infinity are refused by every number field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

# The one table of fields a client may send that this server does not implement: field -> (why, the values
# that mean "off" and so are accepted). ``null`` is always accepted (clients send unset fields as null).
TOOLS = "tool and function calling is not supported by this server (CogVLM has no tool-use training)"
REFUSED: dict[str, tuple[str, tuple[Any, ...]]] = {
    # OpenAI chat and completions
    "tools": (TOOLS, ([],)),
    "tool_choice": (TOOLS, ("none",)),
    "functions": (TOOLS, ([],)),
    "function_call": (TOOLS, ("none",)),
    "parallel_tool_calls": (TOOLS, ()),
    "response_format": ('structured output is not supported; only {"type": "text"} is', ({"type": "text"},)),
    "logit_bias": ("logit_bias is not supported", ({},)),
    "modalities": ('only text output is supported (modalities ["text"])', (["text"],)),
    "audio": ("audio output is not supported", ()),
    "prediction": ("predicted outputs are not supported", ()),
    "reasoning_effort": ("CogVLM models have no reasoning mode", ()),
    "web_search_options": ("web search is not supported", ()),
    "suffix": ("insertion (suffix) is not supported: CogVLM only continues a prompt", ("",)),
    # TGI
    "grammar": ("grammar-constrained generation (JSON schema, regex) is not supported", ()),
    # vLLM SamplingParams fields we do not implement
    "best_of": ("best_of is not supported on vLLM's /generate; use TGI's /generate or /v1/completions", (1,)),
    "use_beam_search": ("beam search is not supported", (False,)),
    "length_penalty": ("length_penalty (beam search) is not supported", (1.0, 1)),
    "min_p": ("min_p is not supported; use top_p or top_k", (0.0, 0)),
    "min_tokens": ("min_tokens is not supported", (0,)),
    "bad_words": ("bad_words is not supported", ([],)),
    "allowed_token_ids": ("allowed_token_ids is not supported", ()),
    "include_stop_str_in_output": ("stop strings are never included in the output here", (False,)),
    "skip_special_tokens": ("special tokens are always skipped in the output here", (True,)),
    "spaces_between_special_tokens": ("special tokens are always skipped in the output here", (True,)),
    "detokenize": ("the output is always detokenized here", (True,)),
    "truncate_prompt_tokens": ("truncate_prompt_tokens is not supported on vLLM's /generate", ()),
    "guided_decoding": ("guided decoding is not supported", ()),
    "logits_processors": ("custom logits processors are not supported", ()),
    "logprobs": ("vLLM's /generate returns text only; ask /v1/completions for logprobs", ()),
    "prompt_logprobs": ("vLLM's /generate returns text only; ask /v1/completions for logprobs", ()),
}
"""Field -> (why it is refused, values meaning "off" that are accepted)."""

IGNORED: dict[str, str] = {
    "user": "an end-user id for the client's own tracking",
    "metadata": "the client's own tags",
    "store": "OpenAI's stored completions: nothing is stored here",
    "service_tier": "OpenAI's billing tier",
    "batch_size": "MindIE's hint of the client's batch; one request's answer does not depend on it",
    "id": "Triton's request id, echoed back",
}
"""Fields accepted and deliberately without effect: none changes an answer or its shape."""


def _refuse(value: Any, info: ValidationInfo) -> None:
    why, off = REFUSED[info.field_name or ""]
    if value is None or any(type(value) is type(v) and value == v for v in off):
        return None
    raise PydanticCustomError("unsupported_field", "{why}; remove the field", {"why": why})


AdapterId = Annotated[str | None, Field(
    default=None, max_length=128,
    description="The LoRA adapter that answers (a NAME of the server's --adapter NAME=PATH); null or \"\": the base "
                "model. MindIE's bodies send it to every protocol.")]
"""``adapter_id`` of TGI's parameters and MindIE's OpenAI and Triton bodies."""

Refused = Annotated[Any, BeforeValidator(_refuse), Field(default=None, description="Not supported: refused.")]
"""A field from :data:`REFUSED`: null or its "off" value is accepted, anything else is a 400 naming it."""

Ignored = Annotated[Any, Field(default=None, description="Accepted and ignored (see wire.IGNORED).")]


class WireModel(BaseModel):
    """Strict request model: declared fields only, exact JSON types, finite numbers."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @model_validator(mode="wrap")
    @classmethod
    def _name_non_numbers(cls, data: Any, handler: ModelWrapValidatorHandler[WireModel]) -> WireModel:
        """Say what NaN and infinity are (pydantic's "should be a finite number" reads as a range error)."""
        try:
            return handler(data)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            if not any(error["type"] == "finite_number" for error in errors):
                raise
            raise ValidationError.from_exception_data(exc.title, [_line(error) for error in errors]) from None


def _line(error: ErrorDetails) -> InitErrorDetails:
    if error["type"] == "finite_number":
        kind = PydanticCustomError("not_a_number", "{value} is not a number; send a finite number",
                                   {"value": str(error["input"])})
    else:
        kind = PydanticCustomError(error["type"], error["msg"])
    return {"type": kind, "loc": error["loc"], "input": error["input"]}


def _stop_list(value: object) -> object:
    """A stop string or a list of them; an empty one would end every answer at once, so it is refused."""
    stops = [] if value is None else [value] if isinstance(value, str) else value
    if isinstance(stops, list) and any(isinstance(s, str) and not s for s in stops):
        raise ValueError("stop strings must not be empty")
    return stops


StopList = Annotated[list[str], BeforeValidator(_stop_list)]


def _seed_range(value: int) -> int:
    if not -(2**63) <= value < 2**63:
        raise PydanticCustomError("seed_range", "{value} is outside the 64-bit range of seeds", {"value": value})
    return value


Seed = Annotated[int, AfterValidator(_seed_range)]
"""A sampling seed: any signed 64-bit integer (the engine's generators take no more)."""


class ResponseModel(BaseModel):
    """Base of response bodies: strict about what we send."""

    model_config = ConfigDict(extra="forbid")


# Typed prompt parts: OpenAI's content parts plus ``video_url``, shared by every protocol here because the
# MindIE guides send the same parts to all of them. A URL may be a plain string or ``{"url": ...}``.


class MediaURL(WireModel):
    url: str
    detail: Literal["auto", "low", "high"] | None = None  # OpenAI's detail level; CogVLM sees one fixed size


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class ImagePart(WireModel):
    type: Literal["image_url"]
    image_url: MediaURL | str


class VideoPart(WireModel):
    type: Literal["video_url"]
    video_url: MediaURL | str


ContentPart = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]
