"""Video fixtures: the CogVLM2-Video parity goldens, and tiny synthetic videos (see video_helpers)."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from testkit import load_cases, load_goldens
from video_helpers import SyntheticVideo, write_video


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
    return load_goldens("cogvlm2-video")


@pytest.fixture(scope="session")
def golden_cases() -> dict[str, dict]:
    return load_cases("cogvlm2-video")["cases"]["frames"]["videos"]
