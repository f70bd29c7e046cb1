"""HTTP plumbing shared by the protocol routers: bodies, errors in the protocol's shape, streams, disconnects.

Bodies are read and parsed here rather than by FastAPI because real clients (``curl -d``, as in the MindIE
guides) post JSON as ``application/x-www-form-urlencoded``; FastAPI would refuse those. Reading by hand
also bounds the body size while it streams in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..engine import RequestGroup
from .errors import (
    BodyTimeoutError,
    ClientClosedError,
    ForbiddenOriginError,
    InvalidRequestError,
    ServeError,
    UnsupportedMediaTypeError,
    limit_error,
    to_serve_error,
)
from .limits import ServeLimits, mib

ModelT = TypeVar("ModelT", bound=BaseModel)
ErrorRenderer = Callable[[Request, ServeError], Response]

SCHEMAS_KEY = "x-coglens-schemas"  # openapi_extra key whose schemas app.py moves into components


def protocol_route(protocol: str, render: ErrorRenderer) -> type[APIRoute]:
    """An APIRoute class that tags requests with ``protocol`` and answers any failure with ``render``."""

    class ProtocolRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                request.state.protocol = protocol
                try:
                    return await handler(request)
                except Exception as exc:  # every failure leaves in the protocol's own error shape
                    error = to_serve_error(exc)
                    request.state.error = error.message
                    return render(request, error)

            return guarded

    return ProtocolRoute


async def read_json(request: Request) -> Any:
    """The request body as JSON, read within ``--max-body-mb`` and ``--body-timeout`` whatever its Content-Type
    says, and checked for nesting depth and invalid Unicode before any model sees it."""
    limits: ServeLimits = request.app.state.service.limits
    max_bytes = limits.max_body_bytes
    check_origin(request)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaTypeError(f"Content-Encoding {encoding!r} is not supported; send the body uncompressed")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise limit_error(f"the request body is {int(declared)} bytes", "max_body_bytes", mib(max_bytes))
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            body = await _read_body(request, max_bytes)
    except TimeoutError:
        raise BodyTimeoutError(
            f"the request body did not arrive within {limits.body_timeout_s:g} s (is Content-Length larger than "
            f"the body?); raise the limit with {ServeLimits.flag('body_timeout_s')}", code="body_timeout_s") from None
    if not body.strip():
        raise InvalidRequestError("the request body is empty; send a JSON object")
    try:
        data = json.loads(body)
    except RecursionError:
        raise _too_deep("", limits.max_json_depth) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from exc
    check_json_values(data, max_depth=limits.max_json_depth)
    return data


def check_origin(request: Request) -> None:
    """Refuse posts that a web page made from another origin (browsers send ``Origin``; curl and SDKs do not).

    Bodies are parsed as JSON whatever their Content-Type (``curl -d`` sends form-encoded), so without this any web
    page could post to a local server as a "simple" cross-site request; ``--cors-origin`` lists the pages that may.
    """
    origin = request.headers.get("origin")
    if origin is None:
        return
    allowed = request.app.state.settings.cors_origins
    if origin in allowed or "*" in allowed or urlsplit(origin).netloc == request.headers.get("host"):
        return
    raise ForbiddenOriginError(f"a request from the web page origin {origin!r} is refused: browsers may call this "
                               "server only from the origins given with --cors-origin")


async def _read_body(request: Request, max_bytes: int) -> bytes:
    chunks, total = [], 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes:
                raise limit_error(f"the request body is more than {max_bytes} bytes", "max_body_bytes",
                                  mib(max_bytes))
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientClosedError("the client closed the connection while sending the body") from None
    return b"".join(chunks)


def check_json_values(data: Any, *, max_depth: int) -> None:
    """Refuse nesting deeper than ``max_depth`` and strings that are not valid Unicode (JSON's ``\\ud800``
    escapes decode to lone surrogates, which no tokenizer or encoder takes). Iterative: no recursion to blow."""
    stack: list[tuple[Any, str, int]] = [(data, "", 1)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            _check_unicode(value, where or "the body")
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > max_depth:
            raise _too_deep(where, max_depth)
        if isinstance(value, dict):
            for key, item in value.items():
                _check_unicode(key, f"{where}.{key!r}" if where else repr(key))
                stack.append((item, f"{where}.{key}" if where else key, depth + 1))
        else:
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))


def _check_unicode(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(
            f"{where}: invalid Unicode at character {exc.start} (a lone surrogate such as \\ud800 without its pair); "
            "send valid UTF-8 text", param=where) from None


def _too_deep(where: str, max_depth: int) -> InvalidRequestError:
    return InvalidRequestError(f"{where or 'the body'}: JSON nested more than {max_depth} levels deep; raise the "
                               f"limit with {ServeLimits.flag('max_json_depth')}", param=where or None,
                               code="max_json_depth")


def parse(model: type[ModelT], data: Any) -> ModelT:
    """Validate ``data`` against ``model`` (pydantic errors become 400s naming the field)."""
    if not isinstance(data, dict):
        raise InvalidRequestError(f"the request body must be a JSON object, got {type(data).__name__}")
    return model.model_validate(data)


def json_body(*models: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a hand-parsed JSON body (one model, or a choice of several)."""
    refs, schemas = [], {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        refs.append({"$ref": f"#/components/schemas/{model.__name__}"})
    body_schema = refs[0] if len(refs) == 1 else {"oneOf": refs}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": body_schema}}},
            SCHEMAS_KEY: schemas}


async def cancel_on_disconnect(request: Request, work: Awaitable[Response]) -> Response:
    """Run ``work``; if the client disconnects first, cancel it (its ``finally`` aborts the engine request)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise ClientClosedError("the client closed the connection before the answer was ready")


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class EventStreamResponse(StreamingResponse):
    """A streaming response whose body iterator is always closed, so its ``finally`` (engine abort) runs
    even when the client disconnects while a chunk is being sent."""

    def __init__(self, content: AsyncIterator[str], media_type: str = "text/event-stream") -> None:
        super().__init__(content, media_type=media_type,
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


async def in_band_errors(request: Request, group: RequestGroup, events: AsyncIterator[str],
                         error_event: Callable[[ServeError], str], *, end: str | None = None) -> AsyncIterator[str]:
    """``events``, then ``end``; if producing them fails, ``error_event(error)`` first: the 200 is sent by then,
    so a failure can only be reported in the stream, as each protocol does. Whatever happens, the group's
    unfinished requests are aborted and its tokens counted for the access log."""
    try:
        async with contextlib.aclosing(events):
            async for item in events:
                yield item
    except Exception as exc:
        error = to_serve_error(exc)
        request.state.error = error.message
        yield error_event(error)
    except (GeneratorExit, asyncio.CancelledError):
        request.state.error = "the client closed the stream before it ended"
        raise
    finally:
        group.cancel()
        request.state.completion_tokens = group.generated_tokens
    if end is not None:
        yield end


def sse(payload: str) -> str:
    return f"data: {payload}\n\n"


def now() -> int:
    return int(time.time())
