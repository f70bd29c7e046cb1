"""Errors a request can end in, independent of any protocol.

Each protocol package renders a :class:`ServeError` in its own wire shape (OpenAI ``{"error": {...}}``, TGI
``{"error", "error_type"}``, Triton ``{"error"}``); :func:`to_serve_error` maps everything else that can
escape a handler (errors of the processing layer, of the engine and its scheduler, pydantic validation) onto
one, so a user mistake is always a 4xx and never a 500. It is the one place where engine errors get an HTTP
status.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import ValidationError

from ..engine.errors import (
    ContextLengthExceededError,
    EngineError,
    EngineFailureError,
    EngineInputError,
    QueueFullError,
    RequestAbortedError,
    RequestTimeoutError,
)
from ..processing.errors import ContextLengthError, ImageTooLargeError, ProcessingError
from .limits import ServeLimits

logger = logging.getLogger(__name__)


class ServeError(Exception):
    """A request that ends in an error response; ``kind`` is protocol-neutral, protocols map it to names."""

    status_code: ClassVar[int] = 400
    kind: ClassVar[str] = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequestError(ServeError):
    """Malformed JSON, wrong types, values out of range, a conversation the model cannot take."""


class UnsupportedInputError(ServeError):
    """A well-formed request asking for something this server does not do (a part type, a feature)."""

    kind = "unsupported"


class AuthenticationError(ServeError):
    status_code = 401
    kind = "authentication"


class ForbiddenMediaError(ServeError):
    """Media the operator has not allowed: local paths outside --allow-local-media, remote URLs, private hosts."""

    status_code = 403
    kind = "forbidden"


class ForbiddenOriginError(ServeError):
    """A browser request from a web page whose origin is not allowed (--cors-origin)."""

    status_code = 403
    kind = "forbidden"


class ModelNotFoundError(ServeError):
    status_code = 404
    kind = "not_found"


class LimitExceededError(ServeError):
    """Over one of the :class:`ServeLimits`; the message names the limit and its flag."""

    status_code = 413
    kind = "limit_exceeded"


class UnsupportedMediaTypeError(ServeError):
    status_code = 415
    kind = "unsupported_media"


class MediaFetchError(ServeError):
    """A remote media URL that could not be downloaded (HTTP error, timeout, too many redirects)."""

    kind = "media_fetch"


class OverloadedError(ServeError):
    status_code = 429
    kind = "overloaded"


class BodyTimeoutError(ServeError):
    """The client did not send the whole body in time (a Content-Length larger than what it sends)."""

    status_code = 408
    kind = "timeout"


class ClientClosedError(ServeError):
    """The client went away before the answer was ready (nginx's 499: nobody reads this response)."""

    status_code = 499
    kind = "client_closed"


class InternalServerError(ServeError):
    status_code = 500
    kind = "internal"


class UnavailableError(ServeError):
    status_code = 503
    kind = "unavailable"


class TimedOutError(ServeError):
    status_code = 504
    kind = "timeout"


_ENGINE_ERRORS: dict[type[EngineError], type[ServeError]] = {
    QueueFullError: OverloadedError,
    EngineFailureError: InternalServerError,
    RequestAbortedError: UnavailableError,
    RequestTimeoutError: TimedOutError,
}


def limit_error(what: str, limit_name: str, allowed: str, *, param: str | None = None) -> LimitExceededError:
    """``what`` is over the limit ``limit_name`` (a :class:`ServeLimits` field) whose value is ``allowed``."""
    flag = ServeLimits.flag(limit_name)
    return LimitExceededError(f"{what}, over the server's limit of {allowed} (raise it with {flag})",
                              param=param, code=limit_name)


def to_serve_error(exc: BaseException) -> ServeError:
    """The :class:`ServeError` to answer ``exc`` with; unexpected exceptions are logged and become a 500."""
    if isinstance(exc, ServeError):
        return exc
    if isinstance(exc, ValidationError):
        message, param = describe_validation_error(exc)
        return InvalidRequestError(message, param=param)
    if isinstance(exc, ImageTooLargeError):
        return LimitExceededError(str(exc), code="max_image_pixels")
    if isinstance(exc, (ContextLengthError, ContextLengthExceededError)):
        return InvalidRequestError(str(exc), param=exc.param, code="context_length_exceeded")
    if isinstance(exc, (EngineInputError, ProcessingError)):
        return InvalidRequestError(str(exc))
    for engine_error, serve_error in _ENGINE_ERRORS.items():
        if isinstance(exc, engine_error):
            return serve_error(str(exc))
    logger.error("unexpected error while serving a request", exc_info=exc)
    return InternalServerError(f"internal server error ({type(exc).__name__}); the server log has the details")


def describe_validation_error(exc: ValidationError) -> tuple[str, str | None]:
    """One readable message for a pydantic error, and the dotted path of the field at fault.

    Of several errors the deepest one is named first: for a ``str | list[part]`` field given a list with a
    bad part, the error inside the part says more than "not a string".
    """
    errors = sorted(exc.errors(include_url=False), key=lambda err: -len(err["loc"]))
    first = errors[0]
    param = _dotted(first["loc"])
    message = f"{param}: {first['msg']}" if param else first["msg"]
    if first["type"] == "missing":
        message = f"{param}: this field is required"
    elif first["type"] == "extra_forbidden":
        message = f"{param}: unknown field"
    others = len({_dotted(err["loc"]) for err in errors}) - 1
    if others > 0:
        message += f" (and {others} more problem{'s' if others > 1 else ''})"
    return message, param or None


def _dotted(loc: Sequence[Any]) -> str:
    """``("messages", 0, "content", "list[...]", 1, "image_url")`` -> ``messages[0].content[1].image_url``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _is_union_tag(str(part)):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _is_union_tag(part: str) -> bool:
    """Pydantic names the union branch it tried: ``str``, ``list[...]``, ``function-after[...]``, a model class.

    (Our wire field names are all lower case, so a capitalised name is a class.)"""
    return part in {"str", "int", "float", "bool", "dict", "none"} or "[" in part or part[:1].isupper()
