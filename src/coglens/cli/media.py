"""Turning --image / --video options into what the pipeline takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_media(pipe: Any, *, image: Path | None = None, video: Path | None = None) -> list[Any] | None:
    if image is not None and video is not None:
        raise ValueError("give --image or --video, not both")
    if video is not None:
        if pipe.config.variant != "cogvlm2_video":
            raise ValueError(f"--video needs a CogVLM2-Video checkpoint; {pipe.model_path} is {pipe.config.variant}")
        from ..processing.video import load_video

        clip = load_video(video, image_size=pipe.config.vision_config.image_size)
        return [clip.frames]
    if image is not None:
        if pipe.config.variant == "cogvlm2_video":
            raise ValueError("this is a video model: pass --video (or several images as frames in Python)")
        from ..processing.image import load_image

        return [load_image(image)]
    return None
