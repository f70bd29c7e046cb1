"""`load_video`: the one call that turns a video into CogVLM2-Video's frame tensor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from coglens.processing.video.decode import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DURATION_S,
    DEFAULT_MAX_FRAME_PIXELS,
    DEFAULT_MAX_FRAMES,
    VideoInfo,
    VideoSource,
    decode_video,
)
from coglens.processing.video.errors import VideoInputError, VideoLimitError
from coglens.processing.video.sampling import Rounding, sample_frame_indices
from coglens.processing.video.strategies import DEFAULT_NUM_FRAMES, DEFAULT_WINDOW_S, SamplingStrategy
from coglens.processing.video.transform import transform_frame

TimeOrigin = Literal["stream", "container"]


@dataclass(frozen=True)
class VideoClip:
    """Model-ready frames of one video and where they came from."""

    frames: torch.Tensor  # (T, 3, S, S) float32, normalised
    indices: tuple[int, ...]  # frame index of each row of `frames` (repeats possible)
    timestamps: tuple[float, ...]  # start time (s) of each sampled frame, on the clock chosen by time_origin
    source: VideoInfo

    @property
    def decoded_pixels(self) -> int:
        """Full-size pixels decoded to make `frames`, each distinct frame once: what max_sampled_pixels bounds."""
        return sampled_pixels(self.source, self.indices)


def load_video(
    src: VideoSource,
    *,
    strategy: SamplingStrategy = "chat",
    num_frames: int = DEFAULT_NUM_FRAMES,
    image_size: int = 224,
    time_origin: TimeOrigin = "stream",
    rounding: Rounding = "half_even",
    pad: bool = False,
    window_s: float | None = DEFAULT_WINDOW_S,
    seek: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_duration_s: float = DEFAULT_MAX_DURATION_S,
    max_frames: int = DEFAULT_MAX_FRAMES,
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS,
    max_sampled_pixels: int | None = None,
) -> VideoClip:
    """Decode, sample and transform a video (path or bytes) the way CogVLM2-Video's release does.

    Defaults reproduce the released loader. `time_origin="container"` samples on the container
    clock (PyAV's `frame.time`) instead of decord's stream-relative one, which differs for streams
    that do not start at 0; `rounding`, `pad` and `window_s` are described in
    `sample_frame_indices`; `max_bytes`, `max_duration_s`, `max_frames` and `max_frame_pixels` are the
    safety limits of `decode_video`. `max_sampled_pixels` bounds the full-size pixels of the distinct
    sampled frames (frames x width x height, known before any decoding; None: no bound). Each frame
    is resized as it is decoded, so memory stays at one full-size frame plus the (T, 3, S, S) output.
    """
    video = decode_video(
        src, max_bytes=max_bytes, max_duration_s=max_duration_s, max_frames=max_frames,
        max_frame_pixels=max_frame_pixels,
    )
    if time_origin == "stream":
        times = video.start_times
    elif time_origin == "container":
        times = video.container_times
    else:
        raise VideoInputError(f"unknown time_origin {time_origin!r}; use 'stream' or 'container'")
    indices = sample_frame_indices(
        times,
        strategy=strategy,
        num_frames=num_frames,
        avg_fps=video.info.avg_fps,
        window_s=window_s,
        rounding=rounding,
        pad=pad,
    )
    _check_sampled_pixels(video.info, indices, max_sampled_pixels)
    rows = video.decode_frames(indices, lambda frame: transform_frame(frame.to_ndarray(format="rgb24"), image_size),
                               seek=seek)
    frames = torch.stack(rows)
    return VideoClip(
        frames=frames,
        indices=tuple(indices),
        timestamps=tuple(float(times[i]) for i in indices),
        source=video.info,
    )


def sampled_pixels(info: VideoInfo, indices: Sequence[int]) -> int:
    """Full-size pixels of the distinct frames at `indices`: known from the header before decoding."""
    return len(set(indices)) * info.width * info.height


def _check_sampled_pixels(info: VideoInfo, indices: list[int], max_sampled_pixels: int | None) -> None:
    pixels = sampled_pixels(info, indices)
    if max_sampled_pixels is not None and pixels > max_sampled_pixels:
        raise VideoLimitError(
            info.name, "max_sampled_pixels", pixels, max_sampled_pixels, "pixels",
            detail=f"{len(set(indices))} frames of {info.width}x{info.height}",
        )
