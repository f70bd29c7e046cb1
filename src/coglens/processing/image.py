"""Image loading (any source, any pixel mode -> RGB) and CogVLM's pixel preprocessing.

``preprocess_image`` reproduces the torchvision pipeline of THUDM's ``build_conversation_input_ids``
(``Resize((S, S), BICUBIC)`` -> ``ToTensor`` -> ``Normalize`` with the CLIP constants) without torchvision:
Pillow does the resize, the rest is the same float32 arithmetic, so the result is bit-identical.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from coglens.processing.errors import (
    ImageDecodeError,
    ImageInputError,
    ImageModeError,
    ImageNotFoundError,
    ImageTooLargeError,
)

ImageSource = str | Path | bytes | Image.Image
RGBColor = tuple[int, int, int]

DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000: above a 50 MP photo, far below a decompression bomb
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_HIGH_DEPTH_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
# What Pillow's plugins raise on hostile or damaged data (truncated streams, bad chunks, broken headers, bad
# deflate streams, out-of-range header fields), while opening or while decoding.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error, zlib.error)
_HEAD_BYTES = 32  # enough for the sizes that _declared_size reads


def load_image(
    src: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, background: RGBColor | None = None
) -> Image.Image:
    """Open ``src`` (a path, encoded bytes or a PIL image), decode it fully and return it as an RGB image.

    The pixel count is checked from the header before any pixel is decoded: more than ``max_pixels`` (or
    more than Pillow's own ``Image.MAX_IMAGE_PIXELS``) raises :class:`ImageTooLargeError`. Animated images
    give their first frame. EXIF orientation is not applied (the original pipeline does not either). Mode
    conversion: see :func:`to_rgb`.
    """
    if isinstance(src, Image.Image):
        return _decoded_rgb(src, "the given PIL image", max_pixels, background)
    where, stream = _open_source(src)
    with _decoder_errors(where, stream), _pillow_bomb_guard(where, max_pixels):
        image = Image.open(stream)
    with image:
        return _decoded_rgb(image, where, max_pixels, background)


def header_size(src: str | Path | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` from the header alone, with :func:`load_image`'s checks and errors (too many pixels,
    zero size, not an image), so a caller can budget several images before decoding any."""
    where, stream = _open_source(src)
    with _decoder_errors(where, stream), _pillow_bomb_guard(where, max_pixels):
        image = Image.open(stream)
    with image:
        _check_size(image.size, where, max_pixels)
        return image.size


def to_rgb(image: Image.Image, *, background: RGBColor | None = None) -> Image.Image:
    """Convert a decoded image of any Pillow mode to RGB.

    - Alpha (RGBA, LA, PA, P or L/RGB with a transparency entry): by default the alpha channel is dropped
      and the colour values under it are kept, exactly what the model card's ``.convert('RGB')`` does; with
      ``background=(r, g, b)`` the image is composited onto that colour instead.
    - 1, L, P, CMYK, YCbCr, LAB, HSV, RGBX: Pillow's conversion (grey replicated, palette looked up, CMYK and
      YCbCr by Pillow's formulas, no ICC profile).
    - 16/32-bit and float (I;16*, I, F), where Pillow would clip at 255: scaled to 8 bits. I;16* use the
      full 16-bit range; I and F the smallest full scale among 1.0 (F only), 255 and 65535 that holds the
      image's maximum (else that maximum); negative and non-finite values become 0. The result is grey RGB.

    Raises :class:`ImageModeError` for a mode Pillow cannot convert.
    """
    if image.mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_rgb(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = _convert(image, "RGBA")
        if background is None:
            return rgba.convert("RGB")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return _convert(image, "RGB")


def preprocess_image(
    image: Image.Image,
    image_size: int,
    *,
    mean: tuple[float, float, float] = CLIP_MEAN,
    std: tuple[float, float, float] = CLIP_STD,
    resample: Image.Resampling | int = Image.Resampling.BICUBIC,
) -> torch.Tensor:
    """Resize to (S, S) bicubic (aspect ratio ignored), scale to [0, 1], CLIP-normalise: float32 (3, S, S).

    ``mean``, ``std`` and ``resample`` default to the original pipeline's; other values are for checkpoints
    trained with other constants (the float32 arithmetic stays the same).
    """
    rgb = image if image.mode == "RGB" else to_rgb(image)
    resized = rgb.resize((image_size, image_size), Image.Resampling(resample))
    pixels = torch.from_numpy(np.array(resized, dtype=np.uint8))  # (S, S, 3)
    scaled = pixels.permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (scaled - mean_t) / std_t


def _open_source(src: str | Path | bytes) -> tuple[str, io.BytesIO | Path]:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"the given image bytes ({len(src)} bytes)", io.BytesIO(bytes(src))
    if not isinstance(src, (str, Path)):
        raise ImageDecodeError(
            f"cannot read an image from a {type(src).__name__}; pass a path, encoded bytes or a PIL image"
        )
    path = Path(src)
    if not path.is_file():
        is_url = str(src).startswith(("http://", "https://"))
        hint = " (URLs are not downloaded: save the file first)" if is_url else ""
        what = "is a directory, not an image file" if path.is_dir() else "does not exist"
        raise ImageNotFoundError(f"image {str(src)!r} {what}{hint}")
    return f"image {str(path)!r}", path


@contextmanager
def _pillow_bomb_guard(where: str, max_pixels: int) -> Iterator[None]:
    """Turn Pillow's decompression-bomb warning and error into :class:`ImageTooLargeError`."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageTooLargeError(
                f"{where} is refused as a possible decompression bomb: {exc} (coglens limit: "
                f"{max_pixels} pixels; if you trust the file, raise PIL.Image.MAX_IMAGE_PIXELS and pass a "
                "larger max_pixels)"
            ) from exc


@contextmanager
def _decoder_errors(where: str, stream: io.BytesIO | Path | None = None) -> Iterator[None]:
    """Turn whatever Pillow raises on unreadable data into one :class:`ImageDecodeError` that names ``where``.

    Our own :class:`ImageInputError` passes through (it is a ValueError too). ``stream``, when given, is re-read
    to tell a zero-sized image from data that is no image at all.
    """
    try:
        yield
    except ImageInputError:
        raise
    except UnidentifiedImageError as exc:
        size = _declared_size(_head(stream)) if stream is not None else None
        if size is not None and 0 in size:
            raise ImageDecodeError(
                f"{where}: the image has zero width or height ({size[0]}x{size[1]}); it holds no pixels to use"
            ) from exc
        raise ImageDecodeError(
            f"{where} is not an image Pillow can read (unknown format or not image data); "
            "pass a PNG, JPEG, GIF, BMP, TIFF or WebP file"
        ) from exc
    except OSError as exc:
        if exc.filename is not None:  # the file system's error (permissions, vanished file), not the data's
            raise ImageNotFoundError(f"{where} cannot be read: {exc.strerror or exc}") from exc
        raise ImageDecodeError(f"{where} is corrupt or truncated ({exc}); re-export or re-download the file") from exc
    except _DECODE_ERRORS as exc:
        raise ImageDecodeError(
            f"{where} is corrupt or truncated ({type(exc).__name__}: {exc}); re-export or re-download the file"
        ) from exc


def _head(stream: io.BytesIO | Path) -> bytes:
    if isinstance(stream, io.BytesIO):
        return stream.getvalue()[:_HEAD_BYTES]
    try:
        with stream.open("rb") as file:
            return file.read(_HEAD_BYTES)
    except OSError:
        return b""


def _declared_size(head: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG or BMP header, read by hand: Pillow refuses zero sizes as unidentified."""
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if head.startswith(b"BM"):
            core = struct.unpack("<I", head[14:18])[0] == 12  # OS/2 1.x header: 16-bit sizes
            width, height = struct.unpack("<HH" if core else "<ii", head[18:22] if core else head[18:26])
            return abs(width), abs(height)
    except struct.error:
        return None
    return None


def _decoded_rgb(image: Image.Image, where: str, max_pixels: int, background: RGBColor | None) -> Image.Image:
    _check_size(image.size, where, max_pixels)  # from the header: nothing decoded yet
    with _decoder_errors(where), _pillow_bomb_guard(where, max_pixels):
        image.load()
    try:
        return to_rgb(image, background=background)
    except ImageModeError as exc:
        raise ImageModeError(f"{where}: {exc}") from exc


def _check_size(size: tuple[int, int], where: str, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{where} is {width}x{height} = {width * height} pixels, more than max_pixels={max_pixels}; "
            "refused before decoding (a possible decompression bomb). Downscale it, or pass a larger "
            "max_pixels if you trust the file",
            pixels=width * height,
        )
    if width == 0 or height == 0:
        raise ImageDecodeError(f"{where}: the image has zero width or height ({width}x{height}); it holds no pixels")


def _convert(image: Image.Image, mode: str) -> Image.Image:
    try:
        return image.convert(mode)
    except ValueError as exc:
        raise ImageModeError(
            f"pixel mode {image.mode!r} cannot be converted to {mode} ({exc}); save the image as RGB or RGBA"
        ) from exc


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    values = np.nan_to_num(np.asarray(image).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    full_scale = _full_scale(image.mode, values)
    grey = np.rint(np.clip(values, 0.0, full_scale) * (255.0 / full_scale)).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _full_scale(mode: str, values: np.ndarray) -> float:
    if mode.startswith("I;16"):
        return 65535.0
    peak = float(values.max(initial=0.0))
    candidates = ((1.0,) if mode == "F" else ()) + (255.0, 65535.0)
    return next((scale for scale in candidates if peak <= scale), peak)
