"""decode -> sample -> read -> transform on videos written by the tests, with hand-derived answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from video_helpers import assert_frames_are

from coglens.processing.video import decode_video, frames_to_clip, load_video, transform_clip

pytest.importorskip("av")

BASE_OVER_45_FRAMES = [
    0,
    1,
    3,
    5,
    7,
    9,
    11,
    13,
    15,
    17,
    19,
    21,
    22,
    24,
    26,
    28,
    30,
    32,
    34,
    36,
    38,
    40,
    42,
    44,
]
BASE_OVER_6_FRAMES = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 4, 4, 4, 4, 5]
BASE_OVER_60_FRAMES = [
    0,
    2,
    5,
    7,
    10,
    12,
    15,
    17,
    20,
    23,
    25,
    28,
    30,
    33,
    35,
    38,
    41,
    43,
    46,
    48,
    51,
    53,
    56,
    59,
]


def test_constant_rate_video_is_indexed_like_decord(synthetic):
    video = decode_video(synthetic["cfr"].path)
    assert (video.info.num_frames, video.info.width, video.info.height) == (45, 48, 32)
    assert video.info.avg_fps == 10.0
    assert video.info.stream_start_s == 0.0
    np.testing.assert_array_equal(video.start_times, (np.arange(45) / 10).astype(np.float32))
    np.testing.assert_allclose(video.timestamps[:, 1] - video.timestamps[:, 0], 0.1, atol=1e-6)


def test_constant_rate_video_samples_and_decodes(synthetic):
    path = synthetic["cfr"].path
    chat = load_video(path, image_size=32)
    assert chat.indices == (0, 10, 20, 30, 40)  # seconds 0..round(4.4)
    assert chat.timestamps == pytest.approx((0.0, 1.0, 2.0, 3.0, 4.0))
    assert load_video(path, strategy="base", image_size=32).indices == tuple(BASE_OVER_45_FRAMES)
    assert load_video(path, image_size=32, pad=True).indices == (0, 10, 20, 30, 40) + (40,) * 19
    assert_frames_are(decode_video(path).read_frames(chat.indices), list(chat.indices))


def test_variable_rate_video_follows_the_written_timestamps(synthetic):
    video = decode_video(synthetic["vfr"].path)
    np.testing.assert_array_equal(video.start_times, np.float32([0.0, 0.2, 0.5, 1.5, 1.7, 2.5]))
    # second 1 is a tie between 0.5 and 1.5 (earlier wins); round(2.5) = 2 ends at second 2
    assert load_video(video.source).indices == (0, 2, 4)
    assert load_video(video.source, rounding="half_up").indices == (0, 2, 4, 5)
    assert load_video(video.source, strategy="base").indices == tuple(BASE_OVER_6_FRAMES)
    assert_frames_are(video.read_frames(range(6)), list(range(6)))


def test_long_video_caps_chat_at_24_frames_and_base_at_60_seconds(synthetic):
    path = synthetic["long"].path
    video = decode_video(path)
    assert (video.info.num_frames, video.info.avg_fps, video.info.duration_s) == (70, 1.0, 70.0)
    assert load_video(path, image_size=16).indices == tuple(range(24))
    base = load_video(path, strategy="base", image_size=16)
    assert base.indices == tuple(BASE_OVER_60_FRAMES)
    assert load_video(path, strategy="base", window_s=None, image_size=16).indices == tuple(range(0, 70, 3))
    assert_frames_are(video.read_frames(base.indices), list(base.indices))


def test_seeking_and_a_single_pass_return_the_same_frames(synthetic):
    video = decode_video(synthetic["long"].path)
    assert video.keyframe_indices.tolist() == list(range(0, 70, 10))
    indices = [69, 3, 41, 40, 41, 10, 9]
    with_seek = video.read_frames(indices, seek=True)
    assert np.array_equal(with_seek, video.read_frames(indices, seek=False))
    assert_frames_are(with_seek, indices)


def test_stream_starting_late_is_sampled_from_its_own_start_by_default(synthetic):
    path = synthetic["offset"].path
    video = decode_video(path)
    assert video.info.stream_start_s == 2.0
    np.testing.assert_array_equal(video.start_times, np.arange(10, dtype=np.float32) / 2)
    np.testing.assert_array_equal(video.container_times, 2.0 + np.arange(10) / 2)
    stream_clock = load_video(path)
    assert stream_clock.indices == (0, 2, 4, 6, 8)  # seconds 0..round(4.5) of the stream
    # On the container clock frames start at 2 s: seconds 0 and 1 both take the first frame.
    container_clock = load_video(path, time_origin="container")
    assert container_clock.indices == (0, 0, 0, 2, 4, 6, 8)
    assert container_clock.timestamps == (2.0, 2.0, 2.0, 3.0, 4.0, 5.0, 6.0)


def test_bytes_and_paths_give_the_same_clip(synthetic):
    path = synthetic["vfr"].path
    from_path = load_video(path, image_size=24)
    from_bytes = load_video(path.read_bytes(), image_size=24)
    assert from_bytes.indices == from_path.indices
    assert torch.equal(from_bytes.frames, from_path.frames)
    assert from_bytes.source.name == f"<{path.stat().st_size} bytes>"
    assert from_path.source.name == str(path)


def test_load_video_frames_are_the_transformed_decoded_frames(synthetic):
    path = synthetic["cfr"].path
    clip = load_video(path, image_size=24)
    expected = transform_clip(frames_to_clip(decode_video(path).read_frames(clip.indices)), 24)
    assert clip.frames.shape == (5, 3, 24, 24)
    assert torch.equal(clip.frames, expected)


def test_read_frames_rejects_indices_outside_the_video(synthetic):
    video = decode_video(synthetic["cfr"].path)
    with pytest.raises(IndexError, match=r"\[0, 45\)"):
        video.read_frames([3, 45])
