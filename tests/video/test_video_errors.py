"""Inputs that cannot be used give a VideoInputError naming the problem and the fix."""

from __future__ import annotations

import numpy as np
import pytest

from coglens.processing.video import VideoInputError, VideoLimitError, decode_video, load_video

av = pytest.importorskip("av")


def _write_audio_only(path) -> None:
    with av.open(str(path), "w") as container:
        _mux_silence(container, container.add_stream("aac", rate=8000))


def _mux_silence(container, stream) -> None:
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
    frame.sample_rate, frame.pts = 8000, 0
    container.mux(stream.encode(frame))
    container.mux(stream.encode())


def test_missing_file(tmp_path):
    with pytest.raises(VideoInputError, match="no such file"):
        decode_video(tmp_path / "missing.mp4")


def test_directory(tmp_path):
    with pytest.raises(VideoInputError, match="not a regular file"):
        decode_video(tmp_path)


def test_empty_file_and_empty_bytes(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoInputError, match="empty"):
        decode_video(empty)
    with pytest.raises(VideoInputError, match="empty"):
        load_video(b"")


def test_garbage_bytes(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoInputError, match="not a readable video"):
        decode_video(garbage)


def test_file_cut_before_its_index(synthetic):
    # mp4 writes its index (moov) at the end: the first half alone cannot be opened.
    data = synthetic["long"].path.read_bytes()
    with pytest.raises(VideoInputError, match="not a readable video"):
        decode_video(data[: len(data) // 2])


def test_file_cut_in_its_frame_data(tmp_path):
    path = tmp_path / "faststart.mp4"
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = 64
        noise = np.random.default_rng(0).integers(0, 256, (20, 64, 64, 3), dtype=np.uint8)
        for k, pixels in enumerate(noise):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    data = path.read_bytes()
    video = decode_video(data[: len(data) // 2])  # the index is intact, the last frames are not
    with pytest.raises(VideoInputError, match="could not be decoded"):
        video.read_frames([video.info.num_frames - 1])


def test_audio_only_file(tmp_path):
    path = tmp_path / "speech.m4a"
    _write_audio_only(path)
    with pytest.raises(VideoInputError, match=r"no video stream in this file \(streams found: audio\)"):
        load_video(path)


def test_video_stream_without_frames(tmp_path):
    path = tmp_path / "no_frames.mkv"
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=10)
        video.width = video.height = 32
        _mux_silence(container, container.add_stream("aac", rate=8000))
    with pytest.raises(VideoInputError, match="the video stream has no frames"):
        decode_video(path)


@pytest.mark.parametrize(
    ("limits", "limit"),
    [
        ({"max_bytes": 100}, "max_bytes"),
        ({"max_duration_s": 3.0}, "max_duration_s"),
        ({"max_frames": 10}, "max_frames"),
    ],
)
def test_limits_name_the_limit_and_how_to_raise_it(synthetic, limits, limit):
    path = synthetic["cfr"].path  # 4.5 s, 45 frames, a few kB
    with pytest.raises(VideoLimitError, match=f"over the {limit} limit.*raise the limit.*{limit}=") as caught:
        load_video(path, **limits)
    assert caught.value.limit == limit
    assert isinstance(caught.value, VideoInputError)


def test_unknown_time_origin(synthetic):
    with pytest.raises(VideoInputError, match="unknown time_origin"):
        load_video(synthetic["cfr"].path, time_origin="wall")
