"""Pick which frames of a video CogVLM2-Video sees, as the released `load_video` does.

The defaults reproduce THUDM/CogVLM2 `video_demo/cli_video_demo.py` (`load_video`) bit for bit,
quirks included, because they define the inputs the released model was tuned on:

- 'chat': for each whole second `s` in `range(round(max(t)) + 1)` take the FIRST frame whose start
  time is nearest to `s` (|t - s| in float64, as numpy 1.x computed it), stop after `num_frames`.
  `round` is Python's (half to even); picks repeat when a second has no frame of its own; a short
  video gives fewer than `num_frames` frames (no padding).
- 'base': `np.linspace(0, end - 1, num_frames, dtype=int)` with `end = min(N, int(60 * avg_fps))`:
  always `num_frames` indices (repeats on short videos) over the first 60 s only.

Options change this on purpose: `rounding="half_up"`, `pad=True`, `window_s=`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from coglens.processing.video.errors import VideoInputError
from coglens.processing.video.strategies import DEFAULT_NUM_FRAMES, DEFAULT_WINDOW_S, SamplingStrategy

Rounding = Literal["half_even", "half_up"]


def sample_frame_indices(
    timestamps: Sequence[float] | np.ndarray,
    *,
    strategy: SamplingStrategy = "chat",
    num_frames: int = DEFAULT_NUM_FRAMES,
    avg_fps: float | None = None,
    window_s: float | None = DEFAULT_WINDOW_S,
    rounding: Rounding = "half_even",
    pad: bool = False,
) -> list[int]:
    """Frame indices to feed the model, in order (repeats possible).

    Args:
        timestamps: start time in seconds of every frame, in presentation order (for the original
            behaviour: `DecodedVideo.start_times`, which are relative to the stream start).
        strategy: 'chat' (one frame per second) or 'base' (evenly spaced over a time window).
        num_frames: the cap ('chat') or exact count ('base') of frames; the model was tuned on 24.
        avg_fps: the stream's average frame rate; required by 'base' to turn `window_s` into frames.
        window_s: 'base' only: seconds from the start that are sampled (60 in the original);
            None samples the whole video.
        rounding: 'chat' only: how the last start time is rounded to the last sampled second;
            'half_even' (Python's round, the original) or 'half_up' (a last frame at 6.5 s then
            also gives second 7).
        pad: repeat the last index until there are `num_frames` (the original gives short videos
            fewer frames under 'chat').
    """
    starts = np.asarray(timestamps)
    if starts.ndim != 1 or starts.size == 0:
        raise VideoInputError(
            f"timestamps must be a non-empty 1-D sequence of start seconds (e.g. DecodedVideo.start_times), "
            f"got shape {starts.shape}"
        )
    if num_frames < 1:
        raise VideoInputError(f"num_frames must be at least 1, got {num_frames}")
    if strategy == "chat":
        indices = _chat_indices(starts, num_frames, rounding)
    elif strategy == "base":
        indices = _base_indices(len(starts), num_frames, avg_fps, window_s)
    else:
        raise VideoInputError(f"unknown frame sampling strategy {strategy!r}; use 'chat' or 'base'")
    if not indices:
        raise VideoInputError(
            f"no frame starts before {starts.max():g} s + 0.5 s, so 'chat' sampling picked nothing; "
            "are the timestamps negative?"
        )
    if pad and len(indices) < num_frames:
        indices += [indices[-1]] * (num_frames - len(indices))
    return indices


def _chat_indices(starts: np.ndarray, num_frames: int, rounding: Rounding) -> list[int]:
    last = float(starts.max())
    if rounding == "half_even":
        last_second = round(last)
    elif rounding == "half_up":
        last_second = math.floor(last + 0.5)
    else:
        raise VideoInputError(f"unknown rounding {rounding!r}; use 'half_even' or 'half_up'")
    starts64 = starts.astype(np.float64)
    # argmin returns the first of equal distances: ties go to the earlier frame, as min() did.
    return [int(np.argmin(np.abs(starts64 - second))) for second in range(min(last_second + 1, num_frames))]


def _base_indices(total: int, num_frames: int, avg_fps: float | None, window_s: float | None) -> list[int]:
    if avg_fps is None or not math.isfinite(avg_fps) or avg_fps <= 0:
        raise VideoInputError(
            f"'base' sampling needs the video's average frame rate (avg_fps > 0), got {avg_fps}"
        )
    end = total if window_s is None else min(total, int(window_s * avg_fps))
    # The original would ask for frame -1 when the window holds no frame; take the first one instead.
    end = max(end, 1)
    return [int(i) for i in np.linspace(0, end - 1, num_frames, dtype=int)]
