"""Video fixtures: the CogVLM2-Video parity goldens, and tiny synthetic videos (see video_helpers)."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch
from safetensors.torch import load_file
from video_helpers import GOLDENS_DIR, SyntheticVideo, write_video


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SyntheticVideo]:
    """Tiny videos written once per session (about 0.1 s in all)."""
    pytest.importorskip("av")
    root = tmp_path_factory.mktemp("videos")
    ms = Fraction(1, 1000)
    return {
        # 10 fps, 45 frames (4.5 s): shorter than 24 s.
        "cfr": write_video(root / "cfr.mp4", list(range(45)), Fraction(1, 10), 10),
        # Variable frame times 0, 0.2, 0.5, 1.5, 1.7, 2.5 s: a tie at second 1, last start 2.5 s.
        "vfr": write_video(root / "vfr.mp4", [0, 200, 500, 1500, 1700, 2500], ms, 10),
        # 1 fps, 70 frames (70 s, longer than 60 s), a keyframe every 10 frames so seeking matters.
        "long": write_video(root / "long.mp4", list(range(70)), Fraction(1, 1), 1, size=(32, 32), gop=10),
        # First frame at 2 s on the container clock, then every 0.5 s.
        "offset": write_video(root / "offset.mp4", [2000 + 500 * k for k in range(10)], ms, 2),
    }


@pytest.fixture(scope="session")
def goldens() -> dict[str, torch.Tensor]:
    path = GOLDENS_DIR / "goldens.safetensors"
    if not path.is_file():
        pytest.fail(f"parity fixtures not found at {path}")
    return load_file(path)


@pytest.fixture(scope="session")
def golden_cases() -> dict[str, dict]:
    path = GOLDENS_DIR / "cases.json"
    if not path.is_file():
        pytest.fail(f"parity fixtures not found at {path}")
    return json.loads(path.read_text())["cases"]["frames"]["videos"]
