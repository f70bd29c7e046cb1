"""Helpers for the video tests: where the parity goldens are, and tiny synthetic videos written with PyAV.

Synthetic frame k is a solid colour that encodes k (`frame_colour`), so a decoded frame tells which
frame it is even after lossy H.264 coding (errors stay within a few levels).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from parity_paths import PARITY_DIR

GOLDENS_DIR = PARITY_DIR / "cogvlm2-video-tiny-goldens"
GOLDEN_VIDEOS = ("cfr", "vfr", "long")
COLOUR_TOLERANCE = 6  # max |decoded - written| per channel for solid frames through yuv420p H.264


@dataclass(frozen=True)
class SyntheticVideo:
    path: Path
    pts: tuple[int, ...]
    time_base: Fraction


def frame_colour(k: int) -> tuple[int, int, int]:
    """RGB of synthetic frame k: 12-level steps in R and G, far apart compared with codec loss."""
    return 16 + 12 * (k % 16), 16 + 12 * (k // 16), 128


def write_video(
    path: Path,
    pts: list[int],
    time_base: Fraction,
    rate: int,
    *,
    size: tuple[int, int] = (32, 48),
    gop: int | None = None,
    container_format: str | None = None,
) -> SyntheticVideo:
    """H.264 video whose frame k (in `pts` order) is solid `frame_colour(k)`, `size` = (height, width)."""
    import av  # the tests that write videos are skipped without PyAV (see conftest)

    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = time_base
        if gop is not None:
            stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
        for k, frame_pts in enumerate(pts):
            pixels = np.empty((*size, 3), dtype=np.uint8)
            pixels[...] = frame_colour(k)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = frame_pts, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return SyntheticVideo(path, tuple(pts), time_base)


def assert_frames_are(frames: np.ndarray, expected_k: list[int]) -> None:
    """Every pixel of frames[i] is within codec loss of frame_colour(expected_k[i])."""
    assert frames.shape[0] == len(expected_k)
    expected = np.array([frame_colour(k) for k in expected_k], dtype=np.int16)[:, None, None, :]
    error = np.abs(frames.astype(np.int16) - expected)
    assert error.max() <= COLOUR_TOLERANCE, f"frames differ from {expected_k} by up to {error.max()}"
