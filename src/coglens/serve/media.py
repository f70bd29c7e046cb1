"""Images and videos named in requests: ``data:`` URLs, local files, remote URLs, each within the server's limits.

- ``data:`` URLs always work (their size is bounded by ``--max-body-mb``);
- local paths (plain or ``file://``) only under ``--allow-local-media DIR``: the path is resolved (symlinks
  and ``..`` included) and must stay inside DIR;
- ``http(s)`` URLs only with ``--allow-remote-media``, through :class:`~coglens.serve.fetch.RemoteFetcher`.

Bytes are sniffed before any decoder sees them: images must be PNG, JPEG, WebP, GIF (first frame) or BMP and
videos MP4/MOV, Matroska/WebM or AVI, so neither Pillow's rarer decoders nor FFmpeg's playlist demuxers
(which open further URLs) are reachable from a request.

Pixels are bounded before decoding, from the headers: each image by ``--max-image-pixels``, each video frame by
``--max-video-frame-pixels``, and all images plus all sampled video frames of one request by
``--max-request-pixels`` (a :class:`MediaBudget` per request).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, unquote, urlsplit

import anyio.to_thread
import torch

from ..processing.errors import ImageInputError, ImageTooLargeError
from ..processing.image import header_size, load_image, preprocess_image
from .errors import (
    ForbiddenMediaError,
    InvalidRequestError,
    LimitExceededError,
    ServeError,
    UnsupportedInputError,
    UnsupportedMediaTypeError,
    limit_error,
)
from .fetch import RemoteFetcher
from .limits import ServeLimits, mib
from .messages import MediaRef

if TYPE_CHECKING:
    from ..processing.video import VideoLimitError

IMAGE_FORMATS = "PNG, JPEG, WebP, GIF or BMP"
VIDEO_FORMATS = "MP4/MOV, WebM/MKV or AVI"


class MediaBudget:
    """The full-size pixels one request may still decode (``--max-request-pixels``), charged before decoding.

    One per request, shared by its media calls in turn (they are awaited one after the other).
    """

    def __init__(self, limits: ServeLimits) -> None:
        self.allowed = limits.max_request_pixels
        self.used = 0

    @property
    def remaining(self) -> int:
        return max(self.allowed - self.used, 0)

    def refuse(self, where: str, pixels: int) -> LimitExceededError:
        return limit_error(
            f"{where}: {pixels} more pixels to decode (images, and sampled video frames at full size) after "
            f"{self.used} already decoded for this request", "max_request_pixels", f"{self.allowed} pixels",
            param=where)

    def charge(self, where: str, pixels: int) -> None:
        """Count ``pixels`` against the budget, or refuse them (nothing is counted then)."""
        if pixels > self.remaining:
            raise self.refuse(where, pixels)
        self.used += pixels


class MediaLoader:
    """Turns a :class:`MediaRef` into model-ready pixels: a (3, S, S) image tensor or (T, 3, S, S) frames."""

    def __init__(self, limits: ServeLimits, *, local_root: Path | None = None, allow_remote: bool = False,
                 fetcher: RemoteFetcher | None = None) -> None:
        self.limits = limits
        self.local_root = Path(local_root).resolve() if local_root is not None else None
        self.allow_remote = allow_remote
        self.fetcher = fetcher or RemoteFetcher(timeout_s=limits.fetch_timeout_s, max_redirects=limits.max_redirects)

    def budget(self) -> MediaBudget:
        """A fresh pixel budget for one request: pass it to every :meth:`image` / :meth:`video` call of it."""
        return MediaBudget(self.limits)

    async def image(self, ref: MediaRef, image_size: int, *, budget: MediaBudget | None = None) -> torch.Tensor:
        """(3, S, S) pixels of the image at ``ref``; its pixels are charged to ``budget`` (default: a fresh one)."""
        return (await self.images([ref], image_size, budget=budget))[0]

    async def images(self, refs: list[MediaRef], image_size: int, *,
                     budget: MediaBudget | None = None) -> list[torch.Tensor]:
        """(3, S, S) pixels of each image. Every one is read and its header checked (format, pixel limit, the
        request's ``budget``) before any is decoded: a request over its budget costs no decoding at all."""
        budget = budget or self.budget()
        sources = []
        for ref in refs:
            data = await self.read(ref)
            if _image_format(data) is None:
                raise UnsupportedMediaTypeError(f"{ref.where}: not an image in a supported format "
                                                f"({IMAGE_FORMATS})", param=ref.where)
            width, height = await anyio.to_thread.run_sync(self._image_size, data, ref.where)
            budget.charge(ref.where, width * height)
            sources.append((data, ref.where))
        return [await anyio.to_thread.run_sync(self._decode_image, data, where, image_size)
                for data, where in sources]

    async def video(self, ref: MediaRef, image_size: int, *, budget: MediaBudget | None = None) -> torch.Tensor:
        """(T, 3, S, S) frames of the video at ``ref``; its sampled frames' full-size pixels are charged to
        ``budget`` (default: a fresh one)."""
        data = await self.read(ref)
        if _video_format(data) is None:
            raise UnsupportedMediaTypeError(f"{ref.where}: not a video in a supported container ({VIDEO_FORMATS})",
                                            param=ref.where)
        return await anyio.to_thread.run_sync(self._decode_video, data, ref.where, image_size,
                                              budget or self.budget())

    async def read(self, ref: MediaRef) -> bytes:
        """The raw bytes behind ``ref.url``, whatever its scheme, or a 4xx :class:`ServeError`."""
        url = ref.url.strip()
        scheme = _split(url, ref).scheme.lower() if "://" in url or url[:5].lower() == "data:" else ""
        if scheme == "data":
            return _data_url_bytes(url, ref)
        if scheme in ("http", "https"):
            if not self.allow_remote:
                raise ForbiddenMediaError(
                    f"{ref.where}: remote media URLs are disabled on this server; send the {ref.kind} as a data: "
                    "URL, or start the server with --allow-remote-media", param=ref.where)
            limit_name = "max_image_bytes" if ref.kind == "image" else "max_video_bytes"
            return await self.fetcher.fetch(url, max_bytes=getattr(self.limits, limit_name), limit_name=limit_name,
                                            where=ref.where)
        if scheme in ("", "file"):
            return await anyio.to_thread.run_sync(self._read_local, url, ref)
        raise UnsupportedInputError(f"{ref.where}: unsupported URL scheme {scheme!r}; use data:, http(s): or a "
                                    "file path", param=ref.where)

    def _read_local(self, url: str, ref: MediaRef) -> bytes:
        if self.local_root is None:
            raise ForbiddenMediaError(
                f"{ref.where}: local file paths are disabled on this server; send the {ref.kind} as a data: URL, "
                "or start the server with --allow-local-media DIR", param=ref.where)
        path = Path(_file_url_path(url, ref) if url.lower().startswith("file:") else url)
        if "\0" in str(path):  # the OS cannot take it: Path.resolve and open raise ValueError
            raise InvalidRequestError(f"{ref.where}: the {ref.kind} path {url!r} contains a NUL character, which no "
                                      "file name can hold", param=ref.where)
        try:
            resolved = (path if path.is_absolute() else self.local_root / path).resolve()
            inside, is_file = resolved.is_relative_to(self.local_root), resolved.is_file()
        except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a name too long, unencodable text
            raise InvalidRequestError(f"{ref.where}: cannot use the {ref.kind} path {url[:200]!r} "
                                      f"({type(exc).__name__}: {getattr(exc, 'strerror', None) or exc})",
                                      param=ref.where) from exc
        if not inside:
            raise ForbiddenMediaError(
                f"{ref.where}: {url!r} is outside the folder this server may read media from "
                "(--allow-local-media); symlinks and '..' are followed before this check", param=ref.where)
        if not is_file:
            raise InvalidRequestError(f"{ref.where}: no such file {url!r} in the media folder", param=ref.where)
        limit_name = "max_image_bytes" if ref.kind == "image" else "max_video_bytes"
        max_bytes = getattr(self.limits, limit_name)
        try:
            with resolved.open("rb") as f:
                data = f.read(max_bytes + 1)
        except OSError as exc:  # unreadable (permissions), or gone since the check
            raise InvalidRequestError(f"{ref.where}: cannot read {url!r} ({exc.strerror or exc})",
                                      param=ref.where) from exc
        if len(data) > max_bytes:
            raise limit_error(f"{ref.where}: {url!r} is more than {max_bytes} bytes", limit_name, mib(max_bytes),
                              param=ref.where)
        return data

    def _image_size(self, data: bytes, where: str) -> tuple[int, int]:
        with self._image_errors(where):
            return header_size(data, max_pixels=self.limits.max_image_pixels)

    def _decode_image(self, data: bytes, where: str, image_size: int) -> torch.Tensor:
        with self._image_errors(where):
            return preprocess_image(load_image(data, max_pixels=self.limits.max_image_pixels), image_size)

    @contextmanager
    def _image_errors(self, where: str) -> Iterator[None]:
        try:
            yield
        except ImageTooLargeError:
            raise limit_error(f"{where}: the image has more pixels than allowed", "max_image_pixels",
                              f"{self.limits.max_image_pixels} pixels", param=where) from None
        except ImageInputError as exc:
            raise InvalidRequestError(f"{where}: {exc}", param=where) from exc

    def _decode_video(self, data: bytes, where: str, image_size: int, budget: MediaBudget) -> torch.Tensor:
        from ..processing.video import VideoInputError, VideoLimitError, load_video

        try:
            clip = load_video(data, image_size=image_size, max_bytes=self.limits.max_video_bytes,
                              max_duration_s=self.limits.max_video_seconds,
                              max_frame_pixels=self.limits.max_video_frame_pixels,
                              max_sampled_pixels=budget.remaining)
        except VideoLimitError as exc:
            raise self._video_limit_error(exc, where, budget) from None
        except VideoInputError as exc:
            raise InvalidRequestError(f"{where}: {exc}", param=where) from exc
        budget.charge(where, clip.decoded_pixels)
        return clip.frames

    def _video_limit_error(self, exc: VideoLimitError, where: str, budget: MediaBudget) -> ServeError:
        """The server's own limit (and flag) behind a limit of load_video."""
        limits = self.limits
        if exc.limit == "max_bytes":
            return limit_error(f"{where}: the video is {exc.value:g} bytes", "max_video_bytes",
                               mib(limits.max_video_bytes), param=where)
        if exc.limit == "max_duration_s":
            return limit_error(f"{where}: the video is longer than {limits.max_video_seconds:g} s",
                               "max_video_seconds", f"{limits.max_video_seconds:g} s", param=where)
        if exc.limit == "max_frame_pixels":
            return limit_error(f"{where}: the video's frames are {int(exc.value)} pixels each",
                               "max_video_frame_pixels", f"{limits.max_video_frame_pixels} pixels", param=where)
        if exc.limit == "max_sampled_pixels":
            return budget.refuse(where, int(exc.value))
        return InvalidRequestError(f"{where}: {exc}", param=where)


def _data_url_bytes(url: str, ref: MediaRef) -> bytes:
    """Decode ``data:[<type>][;base64],<payload>``; only base64 payloads carry binary media."""
    header, sep, payload = url.partition(",")
    if not sep:
        raise InvalidRequestError(f"{ref.where}: malformed data: URL (no ',' before the payload)", param=ref.where)
    media_type, *params = header[len("data:"):].split(";")
    if "base64" not in (p.strip().lower() for p in params):
        raise InvalidRequestError(f"{ref.where}: data: URLs must be base64 encoded (data:{ref.kind}/...;base64,...)",
                                  param=ref.where)
    major = media_type.strip().lower().split("/", 1)[0]
    if major and major not in (ref.kind, "application"):
        raise UnsupportedMediaTypeError(f"{ref.where}: a {media_type!r} data URL where an {ref.kind} was expected",
                                        param=ref.where)
    try:
        return base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError(f"{ref.where}: the data: URL is not valid base64 ({exc})", param=ref.where) from exc


def _split(url: str, ref: MediaRef) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed '[' of an IPv6 host
        raise InvalidRequestError(f"{ref.where}: malformed URL {url[:200]!r} ({exc})", param=ref.where) from exc


def _file_url_path(url: str, ref: MediaRef) -> str:
    parts = _split(url, ref)
    if parts.netloc not in ("", "localhost"):
        raise ForbiddenMediaError(f"{ref.where}: file:// URLs must name a local path, got host {parts.netloc!r}",
                                  param=ref.where)
    return unquote(parts.path)


def _image_format(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith(b"BM"):
        return "bmp"
    return None


def _video_format(data: bytes) -> str | None:
    if data[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "mp4"
    if data.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    return None
