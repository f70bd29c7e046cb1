"""What a caller asks of the engine: sampling settings, requests, and the events that come back."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .errors import EngineInputError

FinishReason = Literal["stop", "length", "abort"]
_ids = itertools.count()


@dataclass
class SamplingParams:
    """Decoding settings of one request; ``temperature == 0`` or ``do_sample=False`` means greedy."""

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

    def __post_init__(self) -> None:
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1"),
            (self.temperature >= 0, "temperature", "must be >= 0"),
            (self.top_k >= 0, "top_k", "must be >= 0 (0 = off)"),
            (0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty", "must be > 0 (1 = off)"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty", "must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty", "must be in [-2, 2]"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise EngineInputError(f"{name}={getattr(self, name)!r} {rule}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if any(not s for s in self.stop):  # "" is in every text: it would end every answer at once
            raise EngineInputError("stop strings must not be empty")

    @classmethod
    def from_temperature(cls, temperature: float, *, do_sample: bool | None = None, **fields: Any) -> SamplingParams:
        """The rule of the CLI, the chat demos and the servers' protocols: sample when ``temperature > 0``, greedy
        at 0. ``do_sample=False`` (a request's explicit choice) is greedy whatever the temperature."""
        return cls(temperature=temperature, do_sample=do_sample is not False and temperature > 0, **fields)

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0


@dataclass
class GenerationRequest:
    """A tokenised prompt: 1-D ids and token types, and the image tensors its vision spans need."""

    input_ids: torch.Tensor
    token_type_ids: torch.Tensor
    images: list[torch.Tensor] = field(default_factory=list)
    params: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = field(default_factory=lambda: f"req-{next(_ids)}")

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
