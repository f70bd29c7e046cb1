"""Property tests: whatever bytes arrive, load_image and load_video return media or raise their documented error.

Inputs: arbitrary bytes, arbitrary bytes behind each format's signature, and small valid files with bytes
overwritten (which reach deep into the decoders). Anything but an image / a clip or ImageInputError /
VideoInputError is a bug (a crash, a bare OSError or struct.error, a MemoryError).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from coglens.processing.errors import ImageInputError
from coglens.processing.image import load_image

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

IMAGE_SIGNATURES = {
    "png": b"\x89PNG\r\n\x1a\n",
    "jpeg": b"\xff\xd8\xff",
    "gif": b"GIF89a",
    "webp": b"RIFF\x00\x01\x00\x00WEBPVP8 ",
    "bmp": b"BM",
}
VIDEO_SIGNATURES = {
    "mp4": b"\x00\x00\x00\x18ftypisom",
    "mkv": b"\x1a\x45\xdf\xa3",
    "avi": b"RIFF\x00\x01\x00\x00AVI LIST",
}


def _image_file(fmt: str) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


def _video_file(fmt: str) -> bytes:
    av = pytest.importorskip("av")
    out = io.BytesIO()
    codec = "mpeg4" if fmt == "avi" else "libx264"
    with av.open(out, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=2)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for k in range(4):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 40 * k, np.uint8), format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return out.getvalue()


VALID_IMAGES = {fmt: _image_file(fmt) for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP")}


def mutated(data: bytes) -> st.SearchStrategy[bytes]:
    """`data` with up to 8 bytes overwritten and possibly cut short."""
    edits = st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), min_size=1, max_size=8)
    return st.tuples(edits, st.integers(1, len(data))).map(lambda args: _apply(data, *args))


def _apply(data: bytes, edits: list[tuple[int, int]], length: int) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        out[position] = value
    return bytes(out[:length])


def signed(signatures: dict[str, bytes]) -> st.SearchStrategy[bytes]:
    return st.tuples(st.sampled_from(sorted(signatures.values())), st.binary(max_size=300)).map(b"".join)


def _check_image(data: bytes) -> None:
    try:
        image = load_image(data)
    except ImageInputError:
        return
    assert image.mode == "RGB" and image.width > 0 and image.height > 0


@FUZZ
@given(st.binary(max_size=400) | signed(IMAGE_SIGNATURES))
def test_load_image_on_arbitrary_bytes(data):
    _check_image(data)


@FUZZ
@given(st.sampled_from(sorted(VALID_IMAGES)).flatmap(lambda fmt: mutated(VALID_IMAGES[fmt])))
def test_load_image_on_damaged_files(data):
    _check_image(data)


@pytest.fixture(scope="module")
def valid_videos() -> dict[str, bytes]:
    return {fmt: _video_file(fmt) for fmt in ("mp4", "matroska", "avi")}


def _check_video(data: bytes) -> None:
    from coglens.processing.video import VideoInputError, load_video

    try:
        clip = load_video(data, image_size=8)
    except VideoInputError:
        return
    assert clip.frames.shape[1:] == (3, 8, 8) and clip.frames.shape[0] == len(clip.indices) >= 1


@FUZZ
@given(st.binary(max_size=400) | signed(VIDEO_SIGNATURES))
def test_load_video_on_arbitrary_bytes(data):
    pytest.importorskip("av")
    _check_video(data)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_load_video_on_damaged_files(valid_videos, data):
    fmt = data.draw(st.sampled_from(sorted(valid_videos)))
    _check_video(data.draw(mutated(valid_videos[fmt])))
