"""`transform_clip` and friends on hand-made clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from coglens.processing.video import (
    CLIP_MEAN,
    CLIP_STD,
    VideoInputError,
    frames_from_images,
    frames_to_clip,
    transform_clip,
)


def _column_ramp(height: int, width: int) -> torch.Tensor:
    """(3, 1, H, W) uint8 clip whose pixel value is its column index (row index when portrait)."""
    ramp = torch.arange(max(height, width), dtype=torch.uint8)
    plane = (
        ramp[:width].expand(height, width) if width >= height else ramp[:height, None].expand(height, width)
    )
    return plane.expand(3, 1, height, width).clone()


def _normalised(value: float, channel: int) -> float:
    return (value / 255.0 - CLIP_MEAN[channel]) / CLIP_STD[channel]


@pytest.mark.parametrize(("height", "width"), [(4, 9), (9, 4)])
def test_centre_crop_offset_rounds_half_to_even(height, width):
    # The short side is already 4, so no resampling; the crop starts at round(5 / 2) = 2 (half-up: 3).
    out = transform_clip(_column_ramp(height, width), 4)
    assert out.shape == (1, 3, 4, 4)
    line = out[0, 1, 0, :] if width > height else out[0, 1, :, 0]
    assert line.tolist() == pytest.approx([_normalised(v, 1) for v in (2, 3, 4, 5)], abs=1e-6)


def test_constant_frames_normalise_with_clip_statistics():
    # Any resize of a constant image is that constant (to rounding): a 3x5 white frame, short
    # side 3 -> 4, so 4 x 6 before the crop.
    out = transform_clip(torch.full((3, 2, 3, 5), 255, dtype=torch.uint8), 4)
    assert out.shape == (2, 3, 4, 4)
    for channel, (mean, std) in enumerate(zip(CLIP_MEAN, CLIP_STD, strict=True)):
        expected = (1.0 - mean) / std
        assert out[:, channel].min().item() == pytest.approx(expected, abs=1e-6)
        assert out[:, channel].max().item() == pytest.approx(expected, abs=1e-6)


def test_resize_is_bilinear_without_antialias():
    # A 4x downscale at align_corners=False samples source position 4j + 1.5, i.e. only the two
    # middle pixels of each block of four. They are black here; the white block edges would leak
    # into an antialiased (area-weighted) result.
    columns = torch.tensor([255, 0, 0, 255] * 4, dtype=torch.uint8)
    out = transform_clip(columns.expand(3, 1, 16, 16).clone(), 4)
    assert out[0, 0].flatten().tolist() == pytest.approx([_normalised(0, 0)] * 16, abs=1e-6)


def test_frames_to_clip_moves_channels_first():
    frames = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    clip = frames_to_clip(frames)
    assert clip.shape == (3, 2, 3, 4)
    assert clip[2, 1, 0, 3].item() == frames[1, 0, 3, 2]


def test_images_of_any_size_and_paths_become_frames(tmp_path):
    wide = Image.fromarray(np.full((20, 30, 3), 255, dtype=np.uint8))
    tall_path = tmp_path / "tall.png"
    Image.fromarray(np.zeros((30, 20, 3), dtype=np.uint8)).save(tall_path)
    out = frames_from_images([wide, tall_path], 8)
    assert out.shape == (2, 3, 8, 8)
    assert out[0, 0].unique().tolist() == pytest.approx([_normalised(255, 0)], abs=1e-6)
    assert out[1, 0].unique().tolist() == pytest.approx([_normalised(0, 0)], abs=1e-6)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: transform_clip(torch.zeros(3, 1, 4, 4), 4), r"\(3, T, H, W\) uint8"),
        (lambda: transform_clip(torch.zeros(1, 4, 4, 3, dtype=torch.uint8), 4), r"frames_to_clip"),
        (lambda: transform_clip(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), 0), "image_size"),
        (lambda: frames_to_clip(np.zeros((4, 4, 3), dtype=np.uint8)), r"\(T, H, W, 3\)"),
        (lambda: frames_from_images([], 4), "at least one image"),
        (lambda: frames_from_images(["/nonexistent/frame.png"], 4), "cannot be read as an image"),
    ],
)
def test_bad_inputs_say_what_is_wrong(call, message):
    with pytest.raises(VideoInputError, match=message):
        call()
