"""Batched, streaming generation used by the CLI, the lens, the chat demos and the server."""

from .engine import Engine, EngineStats
from .params import EngineInputError, GenerationRequest, GenerationResult, SamplingParams, TokenEvent
from .sampling import sample_next

__all__ = [
    "Engine", "EngineInputError", "EngineStats", "GenerationRequest", "GenerationResult", "SamplingParams",
    "TokenEvent", "sample_next",
]
