"""One JSON line per HTTP request on the ``coglens.serve.access`` logger, and the request metrics.

A pure ASGI middleware (not Starlette's BaseHTTPMiddleware) so streamed responses pass through untouched
and the line is written when the response really ends, with the time streaming took.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import ServeMetrics

logger = logging.getLogger("coglens.serve.access")


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = uuid.uuid4().hex[:16]
        status = 500  # what the client sees if the app fails before answering

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            seconds = time.perf_counter() - started
            state: dict[str, Any] = scope.get("state") or {}
            protocol = state.get("protocol", "other")
            self.metrics.observe_request(protocol, status, seconds)
            record = {
                "event": "http_request", "request_id": request_id, "method": scope["method"],
                "path": scope["path"], "status": status, "protocol": protocol,
                "duration_ms": round(seconds * 1000, 1), "client": (scope.get("client") or ("", 0))[0],
                "prompt_tokens": state.get("prompt_tokens"), "completion_tokens": state.get("completion_tokens"),
                "error": state.get("error"),
            }
            logger.info(json.dumps({k: v for k, v in record.items() if v is not None}, ensure_ascii=False))
