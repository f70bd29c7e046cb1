"""Hostile videos: frame sizes over the limit (from the header, before decoding), frames larger than the header
says, sampled-pixel budgets, streams without a decoder or a size. Each ends in a VideoInputError, never in
memory exhaustion."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from fractions import Fraction

import numpy as np
import pytest
import torch

from coglens.processing.video import (
    DEFAULT_MAX_FRAME_PIXELS,
    VideoInputError,
    VideoLimitError,
    decode_video,
    load_video,
    transform_clip,
    transform_frame,
)

av = pytest.importorskip("av")


def black_h264(width: int, height: int, frames: int, container_format: str = "mp4") -> bytes:
    """Black H.264 frames at the lowest quality: a few hundred bytes a frame whatever the size."""
    out = io.BytesIO()
    with av.open(out, "w", format=container_format) as container:
        stream = container.add_stream("libx264", rate=1)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "qp": "51"}
        frame = av.VideoFrame(width, height, "yuv420p")
        for plane, level in zip(frame.planes, (16, 128, 128), strict=True):
            plane.update(bytes([level]) * plane.buffer_size)
        for k in range(frames):
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return out.getvalue()


def _annex_b(width: int, height: int, frames: int) -> bytes:
    out = io.BytesIO()
    with av.open(out, "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=1)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "bf": "0"}
        for k in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 100, np.uint8), format="rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return out.getvalue()


def growing_mkv() -> bytes:
    """12 frames of 32x32, then 3 of 64x64, one a second: the header (and FFmpeg's probe) says 32x32."""
    out = io.BytesIO()
    raw = _annex_b(32, 32, 12) + _annex_b(64, 64, 3)
    with av.open(io.BytesIO(raw), format="h264") as source, av.open(out, "w", format="matroska") as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for k, packet in enumerate(p for p in source.demux(source.streams.video[0]) if p.size):
            packet.stream, packet.time_base = stream, Fraction(1, 1000)
            packet.pts = packet.dts = 1000 * k
            packet.duration = 1000
            target.mux(packet)
    return out.getvalue()


@pytest.fixture(scope="module")
def growing() -> bytes:
    return growing_mkv()


def test_default_frame_limit_is_4k():
    assert DEFAULT_MAX_FRAME_PIXELS == 3840 * 2160


def test_frame_size_over_the_limit_is_refused_from_the_header(synthetic):
    path = synthetic["cfr"].path  # 48x32 = 1536 pixels a frame
    with pytest.raises(VideoLimitError, match=r"1536 pixels \(48x32 frames\) is over the max_frame_pixels limit "
                                              r"of 1535 pixels; downscale") as caught:
        load_video(path, max_frame_pixels=1535)
    assert (caught.value.limit, caught.value.value, caught.value.allowed) == ("max_frame_pixels", 1536, 1535)
    assert load_video(path, max_frame_pixels=1536, image_size=8).frames.shape[1:] == (3, 8, 8)
    with pytest.raises(VideoLimitError, match="max_frame_pixels"):
        decode_video(path, max_frame_pixels=1535)  # the index alone is refused: no frame decoded


def test_8k_clip_is_refused_before_any_frame_is_decoded(tmp_path):
    """The issue's clip: 8192x4320 H.264 (30 frames of black are ~37 KB; 2 frames suffice here).

    The child process may allocate only 400 MB more than it holds after its imports (RLIMIT_DATA counts
    malloc and mmap): decoding one 8K frame to RGB and float32 needs ~530 MB, the old loader ~20 GB.
    """
    if not sys.platform.startswith("linux"):
        pytest.skip("RLIMIT_DATA and /proc are Linux's")
    clip = tmp_path / "8k.mp4"
    clip.write_bytes(black_h264(8192, 4320, 2))
    script = textwrap.dedent(f"""
        import resource
        from coglens.processing.video import VideoLimitError, load_video
        import torch
        vm_data = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmData"))
        limit = vm_data * 1024 + (400 << 20)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        try:
            load_video({str(clip)!r})
        except VideoLimitError as exc:
            print("refused:", exc.limit, int(exc.value))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "refused: max_frame_pixels 35389440", result.stderr[-2000:]


def test_frames_larger_than_the_header_says_are_refused_as_decoded(growing):
    video = decode_video(growing)
    assert (video.info.width, video.info.height, video.info.num_frames) == (32, 32, 15)
    # Over our limit (64x64 = 4096 > 3000) but under FFmpeg's own cap (2 x 3000): our check on the decoded frame.
    with pytest.raises(VideoLimitError, match=r"4096 pixels \(64x64 frames\) is over the max_frame_pixels limit"):
        load_video(growing, max_frame_pixels=3000, strategy="base", num_frames=15, image_size=8)
    # Over FFmpeg's cap too (4096 > 2 x 1024): the decoder refuses to allocate the frame at all.
    with pytest.raises(VideoInputError, match="corrupt"):
        load_video(growing, max_frame_pixels=1024, strategy="base", num_frames=15, image_size=8)


def test_frames_of_changing_size_are_each_resized(growing):
    clip = load_video(growing, strategy="base", num_frames=15, image_size=8)
    assert clip.frames.shape == (15, 3, 8, 8)
    first = decode_video(growing).read_frames([0])[0]
    with pytest.raises(VideoInputError, match=r"the frame size changes inside the video \(32x32, 64x64\)"):
        decode_video(growing).read_frames([0, 14])  # full-size frames of two sizes cannot be stacked
    torch.testing.assert_close(clip.frames[0], transform_frame(first, 8), atol=0, rtol=0)


def test_transform_frame_is_a_row_of_transform_clip():
    frames = np.random.default_rng(0).integers(0, 256, (3, 30, 50, 3), dtype=np.uint8)
    whole = transform_clip(torch.from_numpy(frames).permute(3, 0, 1, 2), 16)
    rows = torch.stack([transform_frame(frame, 16) for frame in frames])
    torch.testing.assert_close(rows, whole, atol=0, rtol=0)


def test_sampled_pixels_are_bounded_before_decoding(synthetic):
    path = synthetic["cfr"].path  # 4.5 s at 10 fps: 'chat' takes seconds 0..4, 5 frames of 48x32
    clip = load_video(path, image_size=8, max_sampled_pixels=5 * 1536)
    assert clip.decoded_pixels == 5 * 1536 and len(clip.indices) == 5
    with pytest.raises(VideoLimitError, match=r"7680 pixels \(5 frames of 48x32\) is over the max_sampled_pixels"):
        load_video(path, image_size=8, max_sampled_pixels=5 * 1536 - 1)


def test_repeated_picks_are_decoded_once(synthetic):
    clip = load_video(synthetic["cfr"].path, image_size=8, strategy="base", num_frames=24, window_s=0.3)
    assert len(clip.indices) == 24 and len(set(clip.indices)) == 3  # frames 0..2 repeated
    assert clip.decoded_pixels == 3 * 1536


def test_video_stream_without_a_decoder():
    # The Matroska codec id renamed to one FFmpeg does not know: a video stream, but nothing to decode it with.
    data = black_h264(32, 32, 2, container_format="matroska")
    assert decode_video(data).info.codec == "h264"
    with pytest.raises(VideoInputError, match="FFmpeg has no decoder for this video's codec"):
        decode_video(data.replace(b"V_MPEG4/ISO/AVC", b"V_NOPE/NOPE/NOP"))
