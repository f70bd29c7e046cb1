"""Fixtures of the chat / web / explain tests: scripted checkpoints, a scene image, a video, the real CLI."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).parent))
from chat_helpers import GROUNDING_ANSWER, LOOPING_ANSWER  # noqa: E402
from scripted_model import write_scripted_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = Path(os.environ.get("COGLENS_ARTIFACTS", "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def grounding_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_scripted_checkpoint(GROUNDING_ANSWER, tmp_path_factory.mktemp("scripted") / "grounding")


@pytest.fixture(scope="session")
def looping_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scripted") / "looping"
    return write_scripted_checkpoint(LOOPING_ANSWER, out, loop=True, max_positions=65536)


@pytest.fixture(scope="session")
def scene_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 640x480 drawing with a "cat" and a "dog" where the scripted grounding answer puts their boxes."""
    image = Image.new("RGB", (640, 480), (150, 200, 240))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 300, 639, 479), fill=(110, 170, 90))  # grass
    draw.ellipse((70, 290, 240, 420), fill=(240, 150, 50))  # the cat, inside [[086,560,400,900]]
    draw.polygon([(90, 300), (110, 262), (130, 300)], fill=(240, 150, 50))
    draw.ellipse((350, 90, 550, 270), fill=(120, 80, 40))  # the dog, inside [[520,150,880,600]]
    path = tmp_path_factory.mktemp("images") / "scene.png"
    image.save(path)
    return path


@pytest.fixture(scope="session")
def video_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-second, 4 fps H.264 clip of a square moving over a gradient."""
    import av

    path = tmp_path_factory.mktemp("videos") / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for index in range(12):
            pixels = np.zeros((64, 64, 3), dtype=np.uint8)
            pixels[..., 0] = np.linspace(0, 255, 64, dtype=np.uint8)
            pixels[8:24, 4 * index:4 * index + 16] = (255, 255, 0)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
