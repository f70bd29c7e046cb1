"""The prompts both engines answer in tests/vllm_plugin: text, an image with each template, a mixed batch, a chat
with history, a video clip. Plain data, shared by the vLLM runner (a subprocess) and the test (CogLens's engine)."""

from __future__ import annotations

import numpy as np
from PIL import Image

MAX_TOKENS = 8
QUERY = "What is in the picture?"
HISTORY = [("Describe the colours and the shapes you can see.", "Red and blue circles on a white background.")]


def image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))


def clip(frames: int = 4, seed: int = 1) -> np.ndarray:
    """uint8 frames (T, H, W, 3), as vLLM's video inputs and CogLens's processor both take them."""
    return np.random.default_rng(seed).integers(0, 256, (frames, 40, 48, 3), dtype=np.uint8)


def cases(video: bool) -> list[dict]:
    """Each case: its query, template, history and media. One batch: vLLM answers them all in one generate call."""
    if video:
        return [
            {"name": "text", "template": "chat"},
            {"name": "video-chat", "template": "chat", "video": 1},
            {"name": "video-base", "template": "base", "video": 2},
            {"name": "video-vqa", "template": "vqa", "video": 1},
        ]
    return [
        {"name": "text", "template": "chat"},
        {"name": "image-chat", "template": "chat", "image": 0},
        {"name": "image-vqa", "template": "vqa", "image": 1},
        {"name": "image-base", "template": "base", "image": 2},
        {"name": "text-vqa", "template": "vqa"},
        {"name": "image-history", "template": "chat", "image": 3, "history": True},
    ]
