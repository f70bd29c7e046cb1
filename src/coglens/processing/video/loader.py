"""`load_video`: the one call that turns a video into CogVLM2-Video's frame tensor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from coglens.processing.video.decode import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DURATION_S,
    DEFAULT_MAX_FRAMES,
    VideoInfo,
    VideoSource,
    decode_video,
)
from coglens.processing.video.errors import VideoInputError
from coglens.processing.video.sampling import Rounding, sample_frame_indices
from coglens.processing.video.strategies import DEFAULT_NUM_FRAMES, DEFAULT_WINDOW_S, SamplingStrategy
from coglens.processing.video.transform import frames_to_clip, transform_clip

TimeOrigin = Literal["stream", "container"]


@dataclass(frozen=True)
class VideoClip:
    """Model-ready frames of one video and where they came from."""

    frames: torch.Tensor  # (T, 3, S, S) float32, normalised
    indices: tuple[int, ...]  # frame index of each row of `frames` (repeats possible)
    timestamps: tuple[float, ...]  # start time (s) of each sampled frame, on the clock chosen by time_origin
    source: VideoInfo


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
) -> VideoClip:
    """Decode, sample and transform a video (path or bytes) the way CogVLM2-Video's release does.

    Defaults reproduce the released loader. `time_origin="container"` samples on the container
    clock (PyAV's `frame.time`) instead of decord's stream-relative one, which differs for streams
    that do not start at 0; `rounding`, `pad` and `window_s` are described in
    `sample_frame_indices`; `max_*` are the safety limits of `decode_video`.
    """
    video = decode_video(src, max_bytes=max_bytes, max_duration_s=max_duration_s, max_frames=max_frames)
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
    frames = transform_clip(frames_to_clip(video.read_frames(indices, seek=seek)), image_size)
    return VideoClip(
        frames=frames,
        indices=tuple(indices),
        timestamps=tuple(float(times[i]) for i in indices),
        source=video.info,
    )
