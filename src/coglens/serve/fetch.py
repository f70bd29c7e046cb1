"""Download remote media for a client without letting it reach the server's private network (SSRF).

A client-supplied URL is a request the *server* makes, so every connection goes through
:class:`GuardedBackend`: it resolves the host itself, refuses the connection if *any* address is not
public (private, loopback, link-local, shared, reserved, multicast, IPv4 inside IPv6), and connects to the
address it checked, so a DNS answer cannot change between check and use. Redirects are followed by hand,
each hop through the same guard; body size and total time are bounded.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin, urlsplit

import anyio
import httpcore

from .errors import ForbiddenMediaError, MediaFetchError, limit_error
from .limits import mib

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressPolicy = Callable[[IPAddress], bool]
_REDIRECTS = {301, 302, 303, 307, 308}


def is_public_address(address: IPAddress) -> bool:
    """True only for globally routable unicast addresses (also unwrapping IPv4 carried inside IPv6)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None and not is_public_address(embedded):
            return False
    return address.is_global and not address.is_multicast


class BlockedAddressError(ForbiddenMediaError):
    """The URL's host resolves to an address the server may not connect to for a client."""


class _ResolveError(MediaFetchError):
    """The URL's host does not resolve."""


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """A network backend that connects only to addresses ``allowed`` accepts, after resolving DNS itself."""

    def __init__(self, allowed: AddressPolicy = is_public_address) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._allowed = allowed

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        try:
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise _ResolveError(f"cannot resolve host {host!r}: {exc}") from exc
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        blocked = sorted({str(a) for a in addresses if not self._allowed(a)})
        if not addresses or blocked:
            raise BlockedAddressError(
                f"host {host!r} resolves to {', '.join(blocked) or 'nothing'}: the server does not fetch media "
                "from private, loopback, link-local or reserved addresses"
            )
        return await self._inner.connect_tcp(str(addresses[0]), port, timeout=timeout, local_address=local_address,
                                             socket_options=socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        raise BlockedAddressError("unix sockets are never used for client media")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class RemoteFetcher:
    """GET one http(s) URL into memory within ``max_bytes`` and ``timeout_s`` (redirects included)."""

    def __init__(self, *, timeout_s: float, max_redirects: int, allowed: AddressPolicy = is_public_address) -> None:
        self.timeout_s = timeout_s
        self.max_redirects = max_redirects
        self._allowed = allowed

    async def fetch(self, url: str, *, max_bytes: int, limit_name: str, where: str) -> bytes:
        try:
            with anyio.fail_after(self.timeout_s):
                return await self._follow(url, max_bytes, limit_name, where)
        except (BlockedAddressError, _ResolveError) as exc:  # raised while connecting, where `where` is unknown
            raise type(exc)(f"{where}: {exc.message}", param=where) from None
        except TimeoutError:
            raise MediaFetchError(
                f"{where}: downloading {url} took longer than {self.timeout_s:g} s (raise it with --fetch-timeout)",
                param=where) from None
        except httpcore.TimeoutException as exc:
            raise MediaFetchError(f"{where}: downloading {url} timed out ({exc})", param=where) from exc
        except (httpcore.ProtocolError, httpcore.NetworkError, httpcore.UnsupportedProtocol) as exc:
            raise MediaFetchError(f"{where}: downloading {url} failed: {exc or type(exc).__name__}",
                                  param=where) from exc

    async def _follow(self, url: str, max_bytes: int, limit_name: str, where: str) -> bytes:
        async with httpcore.AsyncConnectionPool(network_backend=GuardedBackend(self._allowed), retries=0) as pool:
            for _ in range(self.max_redirects + 1):
                _check_url(url, where)
                async with pool.stream("GET", url, headers=[(b"Accept", b"image/*, video/*, */*;q=0.5"),
                                                           (b"User-Agent", b"coglens-serve")]) as response:
                    if response.status in _REDIRECTS:
                        location = _header(response, b"location")
                        if location is None:
                            raise MediaFetchError(f"{where}: {url} redirects without a Location header",
                                                  param=where)
                        url = _joined(url, location, where)
                        continue
                    if not 200 <= response.status < 300:
                        raise MediaFetchError(f"{where}: downloading {url} returned HTTP {response.status}",
                                              param=where)
                    return await _read_limited(response, max_bytes, limit_name, where, url)
        raise MediaFetchError(
            f"{where}: more than {self.max_redirects} redirects (raise the limit with --max-redirects)", param=where)


def _joined(url: str, location: str, where: str) -> str:
    try:
        return urljoin(url, location)
    except ValueError as exc:
        raise MediaFetchError(f"{where}: {url} redirects to a malformed URL {location[:200]!r} ({exc})",
                              param=where) from exc


def _check_url(url: str, where: str) -> None:
    try:
        parts = urlsplit(url)
        hostname, _ = parts.hostname, parts.port  # both parse the host part, and raise on a malformed one
    except ValueError as exc:
        raise MediaFetchError(f"{where}: malformed URL {url[:100]!r} ({exc})", param=where) from exc
    if parts.scheme not in ("http", "https") or not hostname:
        raise ForbiddenMediaError(f"{where}: only http(s) URLs with a host are fetched, got {url[:100]!r}",
                                  param=where)


def _header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _read_limited(response: httpcore.Response, max_bytes: int, limit_name: str, where: str,
                        url: str) -> bytes:
    declared = _header(response, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise limit_error(f"{where}: {url} is {int(declared)} bytes", limit_name, mib(max_bytes), param=where)
    chunks, total = [], 0
    async for chunk in response.aiter_stream():
        total += len(chunk)
        if total > max_bytes:
            raise limit_error(f"{where}: {url} is more than {max_bytes} bytes", limit_name, mib(max_bytes),
                              param=where)
        chunks.append(chunk)
    return b"".join(chunks)
