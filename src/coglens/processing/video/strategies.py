"""Which frames of a video CogVLM2-Video sees: the two strategies of the released loader, by name.

Light to import (no numpy, no PyAV): the ``coglens`` command builds its ``--video-strategy`` choices from here.
How each strategy picks its frames is :func:`coglens.processing.video.sampling.sample_frame_indices`.
"""

from __future__ import annotations

from typing import Literal, get_args

SamplingStrategy = Literal["chat", "base"]
SAMPLING_STRATEGIES: tuple[str, ...] = get_args(SamplingStrategy)
DEFAULT_NUM_FRAMES = 24  # what the released model was tuned on: the cap ('chat') or exact count ('base')
DEFAULT_WINDOW_S = 60.0  # 'base' samples the first 60 seconds


def default_strategy(template_version: str | None) -> SamplingStrategy:
    """The strategy THUDM's demo pairs with a prompt template: 'base' frames for the base template, else 'chat'."""
    return "base" if template_version == "base" else "chat"
