"""The server's resource limits, each with the command-line flag that raises it.

Every limit check answers with a 4xx whose message names the limit and this flag, so an operator who hits
one in production knows at once which knob to turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

MIB = 1 << 20


def _limit(default: Any, flag: str) -> Any:
    return field(default=default, metadata={"flag": flag})


@dataclass(frozen=True)
class ServeLimits:
    max_body_bytes: int = _limit(32 * MIB, "--max-body-mb")
    max_image_bytes: int = _limit(20 * MIB, "--max-image-mb")  # a local or remote image file
    max_image_pixels: int = _limit(25_000_000, "--max-image-pixels")
    max_video_frame_pixels: int = _limit(8_294_400, "--max-video-frame-pixels")  # 3840x2160, read from the header
    max_video_bytes: int = _limit(200 * MIB, "--max-video-mb")
    max_video_seconds: float = _limit(600.0, "--max-video-seconds")
    max_media_parts: int = _limit(16, "--max-media-parts")  # images + videos in one request, counted before decoding
    max_request_pixels: int = _limit(100_000_000, "--max-request-pixels")  # all images + sampled frames of a request
    max_prompt_tokens: int = _limit(16_384, "--max-prompt-tokens")
    max_json_depth: int = _limit(64, "--max-json-depth")  # nesting of the request body
    body_timeout_s: float = _limit(30.0, "--body-timeout")  # seconds to receive the whole request body
    max_queue: int = _limit(256, "--max-queue")  # requests waiting for a place in the batch
    max_n: int = _limit(8, "--max-n")  # choices per request (OpenAI ``n``, vLLM ``n``)
    request_timeout_s: float = _limit(600.0, "--request-timeout")
    fetch_timeout_s: float = _limit(15.0, "--fetch-timeout")  # one remote media download, redirects included
    max_redirects: int = _limit(3, "--max-redirects")

    def __post_init__(self) -> None:
        for item in fields(self):
            if getattr(self, item.name) <= 0 and item.name != "max_redirects":
                raise ValueError(f"{item.metadata['flag']} must be > 0, got {getattr(self, item.name)}")
        if self.max_redirects < 0:
            raise ValueError(f"--max-redirects must be >= 0, got {self.max_redirects}")

    @staticmethod
    def flag(name: str) -> str:
        """The command-line flag of the limit called ``name`` (a field of this class)."""
        return next(item.metadata["flag"] for item in fields(ServeLimits) if item.name == name)


def mib(n_bytes: float) -> str:
    return f"{n_bytes / MIB:g} MiB"
