"""Images and videos named in requests: ``data:`` URLs, local files, remote URLs, each within the server's limits.

- ``data:`` URLs always work (their size is bounded by ``--max-body-mb``);
- local paths (plain or ``file://``) only under ``--allow-local-media DIR``: the path is resolved (symlinks
  and ``..`` included) and must stay inside DIR;
- ``http(s)`` URLs only with ``--allow-remote-media``, through :class:`~coglens.serve.fetch.RemoteFetcher`.

Bytes are sniffed before any decoder sees them: images must be PNG, JPEG, WebP, GIF (first frame) or BMP and
videos MP4/MOV, Matroska/WebM or AVI, so neither Pillow's rarer decoders nor FFmpeg's playlist demuxers
(which open further URLs) are reachable from a request.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from urllib.parse import unquote, urlsplit

import anyio.to_thread
import torch

from ..processing.errors import ImageInputError, ImageTooLargeError
from ..processing.image import load_image, preprocess_image
from .errors import (
    ForbiddenMediaError,
    InvalidRequestError,
    UnsupportedInputError,
    UnsupportedMediaTypeError,
    limit_error,
)
from .fetch import RemoteFetcher
from .limits import ServeLimits, mib
from .messages import MediaRef

IMAGE_FORMATS = "PNG, JPEG, WebP, GIF or BMP"
VIDEO_FORMATS = "MP4/MOV, WebM/MKV or AVI"


class MediaLoader:
    """Turns a :class:`MediaRef` into model-ready pixels: a (3, S, S) image tensor or (T, 3, S, S) frames."""

    def __init__(self, limits: ServeLimits, *, local_root: Path | None = None, allow_remote: bool = False,
                 fetcher: RemoteFetcher | None = None) -> None:
        self.limits = limits
        self.local_root = Path(local_root).resolve() if local_root is not None else None
        self.allow_remote = allow_remote
        self.fetcher = fetcher or RemoteFetcher(timeout_s=limits.fetch_timeout_s, max_redirects=limits.max_redirects)

    async def image(self, ref: MediaRef, image_size: int) -> torch.Tensor:
        data = await self.read(ref)
        if _image_format(data) is None:
            raise UnsupportedMediaTypeError(f"{ref.where}: not an image in a supported format ({IMAGE_FORMATS})",
                                            param=ref.where)
        return await anyio.to_thread.run_sync(self._decode_image, data, ref.where, image_size)

    async def video(self, ref: MediaRef, image_size: int) -> torch.Tensor:
        data = await self.read(ref)
        if _video_format(data) is None:
            raise UnsupportedMediaTypeError(f"{ref.where}: not a video in a supported container ({VIDEO_FORMATS})",
                                            param=ref.where)
        return await anyio.to_thread.run_sync(self._decode_video, data, ref.where, image_size)

    async def read(self, ref: MediaRef) -> bytes:
        """The raw bytes behind ``ref.url``, whatever its scheme, or a 4xx :class:`ServeError`."""
        url = ref.url.strip()
        scheme = urlsplit(url).scheme.lower() if "://" in url or url[:5].lower() == "data:" else ""
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
        resolved = (path if path.is_absolute() else self.local_root / path).resolve()
        if not resolved.is_relative_to(self.local_root):
            raise ForbiddenMediaError(
                f"{ref.where}: {url!r} is outside the folder this server may read media from "
                "(--allow-local-media); symlinks and '..' are followed before this check", param=ref.where)
        if not resolved.is_file():
            raise InvalidRequestError(f"{ref.where}: no such file {url!r} in the media folder", param=ref.where)
        limit_name = "max_image_bytes" if ref.kind == "image" else "max_video_bytes"
        max_bytes = getattr(self.limits, limit_name)
        with resolved.open("rb") as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise limit_error(f"{ref.where}: {url!r} is more than {max_bytes} bytes", limit_name, mib(max_bytes),
                              param=ref.where)
        return data

    def _decode_image(self, data: bytes, where: str, image_size: int) -> torch.Tensor:
        try:
            image = load_image(data, max_pixels=self.limits.max_image_pixels)
        except ImageTooLargeError:
            raise limit_error(f"{where}: the image has more pixels than allowed", "max_image_pixels",
                              f"{self.limits.max_image_pixels} pixels", param=where) from None
        except ImageInputError as exc:
            raise InvalidRequestError(f"{where}: {exc}", param=where) from exc
        return preprocess_image(image, image_size)

    def _decode_video(self, data: bytes, where: str, image_size: int) -> torch.Tensor:
        from ..processing.video import VideoInputError, VideoLimitError, load_video

        try:
            clip = load_video(data, image_size=image_size, max_bytes=self.limits.max_video_bytes,
                              max_duration_s=self.limits.max_video_seconds)
        except VideoLimitError as exc:
            if exc.limit == "max_bytes":
                raise limit_error(f"{where}: the video is {exc.value:g} bytes", "max_video_bytes",
                                  mib(self.limits.max_video_bytes), param=where) from None
            if exc.limit == "max_duration_s":
                raise limit_error(f"{where}: the video is longer than {self.limits.max_video_seconds:g} s",
                                  "max_video_seconds", f"{self.limits.max_video_seconds:g} s", param=where) from None
            raise InvalidRequestError(f"{where}: {exc}", param=where) from exc
        except VideoInputError as exc:
            raise InvalidRequestError(f"{where}: {exc}", param=where) from exc
        return clip.frames


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


def _file_url_path(url: str, ref: MediaRef) -> str:
    parts = urlsplit(url)
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
