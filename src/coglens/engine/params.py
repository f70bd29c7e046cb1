"""What a caller asks of the engine: sampling settings, requests, and the events that come back."""

from __future__ import annotations

import itertools
import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .errors import EngineInputError

FinishReason = Literal["stop", "length", "abort"]
_ids = itertools.count()


MAX_TOP_LOGPROBS = 20
MAX_STOP_STRINGS = 64  # the limits keep a hostile request from making every decode step slow
MAX_STOP_CHARS = 1000
MAX_STOP_TOKEN_IDS = 1024
_SEED_RANGE = (-(2**63), 2**64)  # what torch.Generator.manual_seed accepts


@dataclass
class SamplingParams:
    """Decoding settings of one request; ``temperature == 0`` or ``do_sample=False`` means greedy.

    ``typical_p`` and ``watermark`` are transformers' ``TypicalLogitsWarper`` and TGI's watermark
    (``WatermarkLogitsProcessor``); ``top_logprobs`` (0-20) adds the k likeliest tokens to every event;
    ``prompt_logprobs`` adds the prompt tokens' log-probabilities to the first event.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    do_sample: bool = False
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None
    typical_p: float = 1.0
    watermark: bool = False
    top_logprobs: int = 0
    prompt_logprobs: bool = False

    def __post_init__(self) -> None:
        self._check_types()
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1"),
            (self.temperature >= 0, "temperature", "must be >= 0"),
            (self.top_k >= 0, "top_k", "must be >= 0 (0 = off)"),
            (0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (0 < self.typical_p <= 1, "typical_p", "must be in (0, 1] (1 = off)"),
            (self.repetition_penalty > 0, "repetition_penalty", "must be > 0 (1 = off)"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty", "must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty", "must be in [-2, 2]"),
            (0 <= self.top_logprobs <= MAX_TOP_LOGPROBS, "top_logprobs", f"must be in [0, {MAX_TOP_LOGPROBS}]"),
            (self.seed is None or _SEED_RANGE[0] <= self.seed < _SEED_RANGE[1], "seed", "must be in [-2**63, 2**64)"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise EngineInputError(f"{name}={getattr(self, name)!r} {rule}")
        self._check_stops()

    def _check_types(self) -> None:
        """Wrong types fail here, with the setting's name, rather than deep inside a decode step of a batch."""
        for name in ("max_new_tokens", "top_k", "top_logprobs", "seed"):
            value = getattr(self, name)
            if not (_is_int(value) or (name == "seed" and value is None)):
                raise EngineInputError(f"{name}={value!r} is not an integer")
        for name in ("temperature", "top_p", "typical_p", "repetition_penalty", "presence_penalty",
                     "frequency_penalty"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise EngineInputError(f"{name}={value!r} is not a number")
            if not math.isfinite(value):
                raise EngineInputError(f"{name}={value!r} is not a number: give a finite value")
        for name in ("do_sample", "ignore_eos", "watermark", "prompt_logprobs"):
            if not isinstance(getattr(self, name), bool):
                raise EngineInputError(f"{name}={getattr(self, name)!r} must be true or false")

    def _check_stops(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not isinstance(self.stop, list | tuple) or any(not isinstance(s, str) for s in self.stop):
            raise EngineInputError("stop must be a string or a list of strings")
        if any(not s for s in self.stop):  # "" is in every text: it would end every answer at once
            raise EngineInputError("stop strings must not be empty")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise EngineInputError(f"stop has {len(self.stop)} strings: at most {MAX_STOP_STRINGS} are allowed")
        longest = max(map(len, self.stop), default=0)
        if longest > MAX_STOP_CHARS:
            raise EngineInputError(f"a stop string has {longest} characters: at most {MAX_STOP_CHARS} are allowed")
        if not isinstance(self.stop_token_ids, list | tuple):
            raise EngineInputError(f"stop_token_ids={self.stop_token_ids!r} must be a list of token ids")
        self.stop, self.stop_token_ids = list(self.stop), list(self.stop_token_ids)
        if len(self.stop_token_ids) > MAX_STOP_TOKEN_IDS:
            raise EngineInputError(f"stop_token_ids has {len(self.stop_token_ids)} ids: at most "
                                   f"{MAX_STOP_TOKEN_IDS} are allowed")
        if any(not _is_int(t) or t < 0 for t in self.stop_token_ids):
            raise EngineInputError(f"stop_token_ids={self.stop_token_ids!r}: token ids are integers >= 0")

    @classmethod
    def from_temperature(cls, temperature: float, *, do_sample: bool | None = None, **fields: Any) -> SamplingParams:
        """The rule of the CLI, the chat demos and the servers' protocols: sample when ``temperature > 0``, greedy
        at 0. ``do_sample=False`` (a request's explicit choice) is greedy whatever the temperature."""
        return cls(temperature=temperature, do_sample=do_sample is not False and temperature > 0, **fields)

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(eq=False)  # identity: comparing the tensor fields by value raises (and means nothing)
class GenerationRequest:
    """A tokenised prompt: 1-D ids and token types, the image tensors its vision spans need, and the adapter that
    answers it."""

    input_ids: torch.Tensor
    token_type_ids: torch.Tensor
    images: list[torch.Tensor] = field(default_factory=list)
    params: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = field(default_factory=lambda: f"req-{next(_ids)}")
    adapter: str | None = None  # a LoRA adapter of the engine's AdapterBank, by name; None: the base model

    def __post_init__(self) -> None:
        self.input_ids = torch.as_tensor(self.input_ids, dtype=torch.long).flatten()
        self.token_type_ids = torch.as_tensor(self.token_type_ids, dtype=torch.long).flatten()
        if self.input_ids.numel() == 0:
            raise EngineInputError("empty prompt: a request needs at least one token")
        if self.input_ids.shape != self.token_type_ids.shape:
            raise EngineInputError(
                f"input_ids has {self.input_ids.numel()} tokens but token_type_ids has {self.token_type_ids.numel()}"
            )


@dataclass
class TokenEvent:
    """One generated token of one request, as it streams out; the last event has ``finish_reason`` set."""

    request_id: str
    token_id: int | None
    text: str  # the newly visible text (stop strings and incomplete characters held back)
    logprob: float | None
    index: int  # 0-based position among the generated tokens
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    # (token id, log-probability) of the ``top_logprobs`` likeliest tokens, likeliest first; tokens the
    # distribution rules out (probability 0) are left out
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)
    # first event only, with ``prompt_logprobs``: log p(prompt token | the tokens before it) under the raw model;
    # None for the first token and for image/video placeholders
    prompt_logprobs: list[float | None] | None = None
    seconds: float = field(default_factory=time.perf_counter)  # when the event was produced

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class GenerationResult:
    request_id: str
    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    logprobs: list[float] = field(default_factory=list)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)
