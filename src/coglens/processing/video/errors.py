"""Exceptions for video inputs that cannot be turned into CogVLM2-Video frames."""

from __future__ import annotations


class VideoInputError(ValueError):
    """A video (or list of frames) that cannot be used; the message says what is wrong and what to do."""


# What to do about a video over each limit, besides raising the limit.
_ADVICE = {
    "max_frame_pixels": "downscale the video",
    "max_sampled_pixels": "sample fewer frames or downscale the video",
}


class VideoLimitError(VideoInputError):
    """A video over one of the safety limits of `decode_video` / `load_video` (size, duration, frames, pixels).

    Kept apart from other input errors so a server can answer "too large" rather than "malformed"; `limit`
    names the keyword argument, `value` and `allowed` are in `unit`s.
    """

    def __init__(self, name: str, limit: str, value: float, allowed: float, unit: str, *, detail: str = "") -> None:
        self.limit = limit
        self.value = value
        self.allowed = allowed
        what = f" ({detail})" if detail else ""
        super().__init__(
            f"{name}: {_number(value)} {unit}{what} is over the {limit} limit of {_number(allowed)} {unit}; "
            f"{_ADVICE.get(limit, 'cut the video')}, or raise the limit (in Python: decode_video/load_video's "
            f"{limit}=)"
        )


def _number(value: float) -> str:
    """Whole numbers in full (pixel counts run past %g's six digits), others as %g."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
