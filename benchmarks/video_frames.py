"""Frames decoded per second by coglens.processing.video on a synthetic 60 s 720p H.264 video (CPU).

The video is generated once (libx264, preset veryfast, a moving pattern so the encoder does real
work) into the system temp dir and reused by later runs. Rows:

- index pass: `decode_video` (demux only, no pixels), frames indexed per second;
- full decode: every frame through PyAV, without and with the RGB conversion (the decoder's ceiling);
- read_frames / load_video: the frames CogVLM2-Video samples ('chat': one per second over the
  first 24 s; 'base': 24 over 60 s), with keyframe seeking and with one pass from the start.

    python benchmarks/video_frames.py [--fps 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from coglens.processing.video import decode_video, load_video, sample_frame_indices

WIDTH, HEIGHT, SECONDS = 1280, 720, 60


def synthetic_video(fps: int, gop: int) -> Path:
    """Write (once) a 60 s 720p video: a diagonal gradient that scrolls, with a moving bright square."""
    path = Path(tempfile.gettempdir()) / f"coglens-bench-720p-{SECONDS}s-{fps}fps-g{gop}.mp4"
    if path.exists():
        return path
    started = time.perf_counter()
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    gradient = ((x + 2 * y) % 256).astype(np.uint8)
    partial = path.with_suffix(".partial.mp4")
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23", "g": str(gop)}
        for k in range(SECONDS * fps):
            shifted = np.roll(gradient, 4 * k, axis=1)
            pixels = np.stack([shifted, np.roll(shifted, 85), 255 - shifted], axis=-1)
            top, left = (3 * k) % (HEIGHT - 96), (7 * k) % (WIDTH - 96)
            pixels[top : top + 96, left : left + 96] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    partial.rename(path)
    print(f"generated {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s")
    return path


def decode_all(path: Path, *, rgb: bool) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        count = 0
        for frame in container.decode(stream):
            if rgb:
                frame.to_ndarray(format="rgb24")
            count += 1
    return count


def timed(step: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall time of `repeats` runs, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = step()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fps", type=int, default=30, help="frame rate of the synthetic video (default 30)")
    parser.add_argument("--gop", type=int, default=60, help="keyframe interval in frames (default 60)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; the median is shown")
    args = parser.parse_args()

    path = synthetic_video(args.fps, args.gop)
    video = decode_video(path)
    total = video.info.num_frames
    chat = sample_frame_indices(video.start_times, strategy="chat")
    base = sample_frame_indices(video.start_times, strategy="base", avg_fps=video.info.avg_fps)

    rows: list[tuple[str, int, float, str]] = []

    def row(name: str, frames: int, step: Callable[[], object], note: str) -> None:
        seconds, _ = timed(step, args.repeats)
        rows.append((name, frames, seconds, note))

    row("index pass (decode_video)", total, lambda: decode_video(path), "frames indexed/s")
    row("full decode, yuv only", total, lambda: decode_all(path, rgb=False), "frames decoded/s")
    row("full decode + rgb24", total, lambda: decode_all(path, rgb=True), "frames decoded/s")
    for name, indices in (("chat", chat), ("base", base)):
        for seek in (True, False):
            label = f"read_frames {name}, {'seek' if seek else 'one pass'}"
            read = lambda i=indices, s=seek: video.read_frames(i, seek=s)  # noqa: E731
            row(label, len(indices), read, "frames returned/s")
    for strategy in ("chat", "base"):
        row(
            f"load_video {strategy} (224 px)",
            len(chat if strategy == "chat" else base),
            lambda s=strategy: load_video(path, strategy=s),
            "frames returned/s (index+decode+transform)",
        )

    print(
        f"\n{WIDTH}x{HEIGHT}, {SECONDS} s at {args.fps} fps ({total} frames, keyframe every {args.gop}), "
        f"{os.cpu_count()} CPU cores, PyAV {av.__version__}, median of {args.repeats}\n"
    )
    print(f"| {'step':<32} | {'frames':>6} | {'wall s':>7} | {'frames/s':>9} | what |")
    print(f"|{'-' * 34}|{'-' * 7}:|{'-' * 8}:|{'-' * 10}:|------|")
    for name, frames, seconds, note in rows:
        print(f"| {name:<32} | {frames:>6} | {seconds:>7.3f} | {frames / seconds:>9.1f} | {note} |")


if __name__ == "__main__":
    main()
