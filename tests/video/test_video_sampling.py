"""`sample_frame_indices` on hand-made timestamps: every expected list is derived by hand."""

from __future__ import annotations

import numpy as np
import pytest

from coglens.processing.video import VideoInputError, sample_frame_indices


def _chat(starts, **options) -> list[int]:
    return sample_frame_indices(np.asarray(starts, dtype=np.float32), strategy="chat", **options)


def test_chat_takes_the_nearest_frame_per_second():
    # seconds 0..3 (last start 3.0): 0 -> 0.0, 1 -> 0.9, 2 -> 2.2, 3 -> 3.0
    assert _chat([0.0, 0.4, 0.9, 1.6, 2.2, 3.0]) == [0, 2, 4, 5]


def test_chat_ties_go_to_the_earlier_frame():
    # second 1 is 0.5 s from both 0.5 and 1.5
    assert _chat([0.0, 0.5, 1.5]) == [0, 1, 2]


def test_chat_repeats_a_frame_across_a_gap():
    # no frame near second 2: seconds 2 and 3 both take the frame at 3.0 s
    assert _chat([0.0, 0.1, 3.0]) == [0, 1, 2, 2]


def test_chat_rounds_the_last_second_half_to_even_by_default():
    # round(2.5) == 2 -> seconds 0..2; half-up would also sample second 3
    assert _chat([0.0, 2.5]) == [0, 0, 1]
    assert _chat([0.0, 2.5], rounding="half_up") == [0, 0, 1, 1]


def test_chat_distances_are_float64_like_numpy_1():
    # 1.6978451 is closer to second 1 than 0.30215487 in float64 (0.69784510 vs 0.69784513);
    # in float32 both distances round to the same value and the earlier frame would win.
    assert _chat([0.0, 0.30215487, 1.6978451]) == [0, 2, 2]


def test_chat_stops_at_num_frames():
    starts = np.arange(100, dtype=np.float32)
    assert _chat(starts) == list(range(24))
    assert _chat(starts, num_frames=5) == [0, 1, 2, 3, 4]


def test_chat_does_not_pad_short_videos_unless_asked():
    assert _chat([0.0, 1.0, 2.0]) == [0, 1, 2]
    assert _chat([0.0, 1.0, 2.0], pad=True) == [0, 1, 2] + [2] * 21


def test_base_spreads_num_frames_over_the_first_60_seconds():
    # 200 frames at 1 fps: end = min(200, 60) -> linspace(0, 59, 24) truncated
    expected = [0, 2, 5, 7, 10, 12, 15, 17, 20, 23, 25, 28, 30, 33, 35, 38, 41, 43, 46, 48, 51, 53, 56, 59]
    assert sample_frame_indices(np.arange(200.0), strategy="base", avg_fps=1.0) == expected


def test_base_repeats_frames_of_a_short_video():
    # 10 frames: linspace(0, 9, 24) truncated (the recorded video_vfr.mp4 answer too)
    expected = [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 5, 5, 6, 6, 7, 7, 7, 8, 8, 9]
    assert sample_frame_indices(np.arange(10.0) / 2, strategy="base", avg_fps=2.0) == expected


def test_base_window_and_count_options():
    starts = np.arange(200.0)
    assert sample_frame_indices(starts, strategy="base", avg_fps=1.0, window_s=23.0) == [0, *range(23)]
    assert sample_frame_indices(starts[:70], strategy="base", avg_fps=1.0, window_s=None) == list(
        range(0, 70, 3)
    )
    assert sample_frame_indices(starts[:9], strategy="base", avg_fps=1.0, num_frames=4) == [0, 2, 5, 8]


def test_base_with_an_empty_window_uses_the_first_frame():
    # int(60 * 0.001) == 0 frames in the window: the original would ask for frame -1
    assert sample_frame_indices(np.arange(5.0), strategy="base", avg_fps=0.001) == [0] * 24


@pytest.mark.parametrize(
    ("timestamps", "options", "message"),
    [
        ([0.0, 1.0], {"strategy": "middle"}, "unknown frame sampling strategy"),
        ([0.0, 1.0], {"rounding": "up"}, "unknown rounding"),
        ([0.0, 1.0], {"strategy": "base"}, "average frame rate"),
        ([0.0, 1.0], {"strategy": "base", "avg_fps": float("nan")}, "average frame rate"),
        ([[0.0, 0.1]], {}, "1-D"),
        ([], {}, "non-empty"),
        ([0.0, 1.0], {"num_frames": 0}, "num_frames"),
        ([-3.0, -2.0], {}, "picked nothing"),
    ],
)
def test_bad_arguments_say_what_is_wrong(timestamps, options, message):
    with pytest.raises(VideoInputError, match=message):
        sample_frame_indices(timestamps, **options)
