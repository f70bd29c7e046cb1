"""Turning --image / --video options into what the pipeline takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coglens.processing.video.strategies import DEFAULT_NUM_FRAMES, default_strategy


def load_media(
    pipe: Any,
    *,
    image: Path | Any = None,
    video: Path | None = None,
    template: str | None = None,
    video_strategy: str | None = None,
    num_frames: int = DEFAULT_NUM_FRAMES,
) -> list[Any] | None:
    """``video_strategy`` defaults to the template's, as THUDM's demo pairs them: 'base' frames for the base
    template, 'chat' (one frame per second) otherwise. ``image`` is a path or an already decoded PIL image."""
    if image is not None and video is not None:
        raise ValueError("give --image or --video, not both")
    if video is not None:
        if not pipe.config.is_video:
            raise ValueError(f"--video needs a CogVLM2-Video checkpoint; {pipe.model_path} is {pipe.config.variant}")
        from ..processing.video import load_video

        strategy = video_strategy or default_strategy(template or pipe.config.template_version)
        clip = load_video(video, strategy=strategy, num_frames=num_frames,
                          image_size=pipe.config.vision_config.image_size)
        return [clip.frames]
    if image is not None:
        if pipe.config.is_video:
            raise ValueError("this is a video model: pass --video (or several images as frames in Python)")
        from ..processing.image import load_image

        return [load_image(image)]
    return None
