"""Why a request did not get its answer, in the engine's terms.

Every front end words them its own way: the server maps each onto an HTTP status (``serve/errors.py``), the
web demo shows the message, the terminal chat prints it. None of them depends on how another one reports.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class: a request that ends without its answer; the message says why and what to do."""


class EngineInputError(EngineError, ValueError):
    """A request the engine cannot run (too long, bad sampling values...): the caller's to fix."""


class ContextLengthExceededError(EngineInputError):
    """The prompt plus the tokens to generate need more positions than the model has.

    ``param`` names the setting that asked for too many new tokens (None: the prompt alone fills the context).
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class QueueFullError(EngineError):
    """The scheduler's queue has no room for the request: retry later."""


class RequestTimeoutError(EngineError):
    """The request did not finish within the scheduler's time limit; it was aborted."""


class RequestAbortedError(EngineError):
    """The scheduler ended the request (it is shutting down), not the caller."""


class EngineFailureError(EngineError):
    """A decode step failed (out of memory...): the requests in flight are lost, the engine is rebuilt."""
