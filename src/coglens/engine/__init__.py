"""Batched, streaming generation used by the CLI, the lens, the chat demos and the server."""

from .context import fit_new_tokens
from .engine import Engine, EngineStats
from .errors import (
    ContextLengthExceededError,
    EngineError,
    EngineFailureError,
    EngineInputError,
    QueueFullError,
    RequestAbortedError,
    RequestTimeoutError,
)
from .params import GenerationRequest, GenerationResult, SamplingParams, TokenEvent
from .sampling import Draw, sample_next
from .scheduler import RequestGroup, Scheduler, SchedulerMetrics

__all__ = [
    "ContextLengthExceededError", "Draw", "Engine", "EngineError", "EngineFailureError", "EngineInputError",
    "EngineStats", "GenerationRequest", "GenerationResult", "QueueFullError", "RequestAbortedError", "RequestGroup",
    "RequestTimeoutError", "SamplingParams", "Scheduler", "SchedulerMetrics", "TokenEvent", "fit_new_tokens",
    "sample_next",
]
