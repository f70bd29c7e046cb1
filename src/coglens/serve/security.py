"""``--api-key``: bearer-token auth for every route but ``/health`` (and the docs)."""

from __future__ import annotations

import hmac

from fastapi import Request

from .errors import AuthenticationError


async def require_api_key(request: Request) -> None:
    """FastAPI dependency: 401 unless ``Authorization: Bearer <key>`` matches the server's key (if it has one)."""
    expected: str | None = request.app.state.settings.api_key
    if expected is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise AuthenticationError("missing or wrong API key: send the header 'Authorization: Bearer <key>' with "
                                  "the key the server was started with (--api-key)")
