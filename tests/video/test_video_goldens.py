"""Parity with THUDM's decord-based `load_video` and transform, on the recorded fixture videos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from video_helpers import GOLDEN_VIDEOS, GOLDENS_DIR

from coglens.processing.video import (
    decode_video,
    frames_from_images,
    frames_to_clip,
    load_video,
    sample_frame_indices,
    transform_clip,
)

pytest.importorskip("av")

FIXTURE_IMAGE_SIZE = 56  # the tiny model's frame size


def _video_path(name: str) -> str:
    return str(GOLDENS_DIR / f"video_{name}.mp4")


@pytest.mark.parametrize("name", GOLDEN_VIDEOS)
def test_decoded_start_times_equal_decord(name, goldens, golden_cases):
    video = decode_video(_video_path(name))
    recorded = goldens[f"frames/{name}/timestamps"].numpy()
    np.testing.assert_array_equal(video.start_times, recorded[:, 0])
    assert video.start_times.dtype == np.float32
    assert video.info.num_frames == golden_cases[name]["decord_len"]
    assert video.info.avg_fps == golden_cases[name]["decord_avg_fps"]
    case = golden_cases[name]
    assert (video.info.width, video.info.height) == (case["width"], case["height"])


@pytest.mark.parametrize("name", ["cfr", "long"])
def test_decoded_end_times_equal_decord(name, goldens):
    video = decode_video(_video_path(name))
    np.testing.assert_array_equal(video.timestamps, goldens[f"frames/{name}/timestamps"].numpy())


def test_vfr_end_times_follow_packet_durations(goldens):
    # decord 0.6.0's bundled FFmpeg 4 left B-frame packet durations to a frame-rate guess (1/8 s
    # each here); current FFmpeg reads the file's stts table. Durations in presentation order, from
    # the stts/ctts boxes of video_vfr.mp4 (time base 1/16000).
    stts_ticks = np.array([4000, 8000, 8000, 8000, 4000, 4000, 18000, 36000, 2000, 2000])
    video = decode_video(_video_path("vfr"))
    starts = goldens["frames/vfr/timestamps"].numpy()[:, 0]
    np.testing.assert_allclose(video.timestamps[:, 1], starts + stts_ticks / 16000, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", GOLDEN_VIDEOS)
@pytest.mark.parametrize("strategy", ["chat", "base"])
def test_sampler_on_recorded_timestamps(name, strategy, goldens, golden_cases):
    starts = goldens[f"frames/{name}/timestamps"].numpy()[:, 0]
    indices = sample_frame_indices(starts, strategy=strategy, avg_fps=golden_cases[name]["decord_avg_fps"])
    assert indices == goldens[f"frames/{name}/{strategy}_indices"].tolist()


@pytest.mark.parametrize("name", GOLDEN_VIDEOS)
@pytest.mark.parametrize("strategy", ["chat", "base"])
def test_load_video_picks_reference_indices(name, strategy, goldens):
    clip = load_video(_video_path(name), strategy=strategy, image_size=FIXTURE_IMAGE_SIZE)
    assert list(clip.indices) == goldens[f"frames/{name}/{strategy}_indices"].tolist()
    assert clip.frames.shape == (len(clip.indices), 3, FIXTURE_IMAGE_SIZE, FIXTURE_IMAGE_SIZE)


@pytest.mark.parametrize("name", GOLDEN_VIDEOS)
@pytest.mark.parametrize("seek", [True, False])
def test_decoded_pixels_equal_decord(name, seek, goldens, golden_cases):
    frames = decode_video(_video_path(name)).read_frames(golden_cases[name]["transform_frames"], seek=seek)
    assert torch.equal(frames_to_clip(frames), goldens[f"frames/{name}/transform_input_uint8"])


@pytest.mark.parametrize("name", GOLDEN_VIDEOS)
def test_transform_matches_reference(name, goldens):
    output = transform_clip(goldens[f"frames/{name}/transform_input_uint8"], FIXTURE_IMAGE_SIZE)
    assert output.dtype == torch.float32
    torch.testing.assert_close(output, goldens[f"frames/{name}/transform_output"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", GOLDEN_VIDEOS)
def test_load_video_frames_match_reference_transform(name, goldens, golden_cases):
    clip = load_video(_video_path(name), image_size=FIXTURE_IMAGE_SIZE)
    rows = [clip.indices.index(frame) for frame in golden_cases[name]["transform_frames"]]
    expected = goldens[f"frames/{name}/transform_output"]
    torch.testing.assert_close(clip.frames[rows], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", GOLDEN_VIDEOS)
def test_images_as_frames_match_reference_transform(name, goldens):
    clip = goldens[f"frames/{name}/transform_input_uint8"]
    images = [Image.fromarray(frame.numpy()) for frame in clip.permute(1, 2, 3, 0)]
    output = frames_from_images(images, FIXTURE_IMAGE_SIZE)
    torch.testing.assert_close(output, goldens[f"frames/{name}/transform_output"], atol=1e-6, rtol=0)
