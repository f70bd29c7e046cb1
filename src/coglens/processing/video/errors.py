"""Exceptions for video inputs that cannot be turned into CogVLM2-Video frames."""

from __future__ import annotations


class VideoInputError(ValueError):
    """A video (or list of frames) that cannot be used; the message says what is wrong and what to do."""


class VideoLimitError(VideoInputError):
    """A video over one of the safety limits of `decode_video` (size, duration or frame count).

    Kept apart from other input errors so a server can answer "too large" rather than "malformed".
    """

    def __init__(self, name: str, limit: str, value: float, allowed: float, unit: str) -> None:
        self.limit = limit
        self.value = value
        self.allowed = allowed
        super().__init__(
            f"{name}: {value:g} {unit} is over the {limit} limit of {allowed:g} {unit}; "
            f"cut the video, or pass a larger {limit}= to decode_video/load_video"
        )
