"""`coglens ask --video` on the tiny CogVLM2-Video: same greedy answer as the pipeline, clear errors (the command
run in this process through its entry point: testkit.run_cli)."""

from __future__ import annotations

import os

import av
import numpy as np
import pytest
from testkit import run_cli


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """5 s at 4 fps, frame k a solid grey level 10k."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=4)
        stream.width, stream.height = 64, 48
        for k in range(20):
            frame = np.full((48, 64, 3), 10 * k, dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path


def test_ask_video_equals_the_engine(clip, tiny_pipelines):
    from coglens.engine import SamplingParams
    from coglens.processing.video import load_video

    pipe = tiny_pipelines("cogvlm2-video")
    frames = load_video(clip, image_size=pipe.config.vision_config.image_size)
    assert frames.indices == (0, 4, 8, 12, 16, 19)  # last start 4.75 s rounds to 5: seconds 0..5
    expected = pipe.ask("What happens?", images=[frames.frames], params=SamplingParams(max_new_tokens=8)).text
    out = run_cli("ask", "--model", "tiny:cogvlm2-video", "--video", str(clip), "What happens?",
                  "--max-new-tokens", "8")
    assert out.returncode == 0, out.stderr
    assert out.stdout == expected + "\n"


def _write(path, data):
    path.write_bytes(data)
    return path


def _audio_only(path):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=8000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


@pytest.mark.parametrize("make,needle", [
    (lambda p: p / "none.mp4", "none.mp4"),
    (lambda p: _write(p / "empty.mp4", b""), "empty"),
    (lambda p: _write(p / "junk.mp4", os.urandom(4096)), "junk.mp4"),
    (lambda p: _audio_only(p / "audio.m4a"), "audio"),
])
def test_ask_bad_videos_are_clear_errors(tmp_path, make, needle):
    out = run_cli("ask", "--model", "tiny:cogvlm2-video", "--video", str(make(tmp_path)), "hi")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error:") and needle in out.stderr.lower()


def test_ask_video_on_an_image_model(clip):
    out = run_cli("ask", "--video", str(clip), "hi")
    assert out.returncode == 1 and "CogVLM2-Video" in out.stderr
