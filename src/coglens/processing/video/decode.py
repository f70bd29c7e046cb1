"""Read a video with PyAV and describe its frames exactly as decord 0.6.0 does.

CogVLM2-Video's released loader (THUDM/CogVLM2 `video_demo/cli_video_demo.py`) indexes a video with
decord: one frame per packet of the best video stream, sorted by presentation time, each with the
start time `(pts - stream.start_time) * time_base` computed in decord's float arithmetic. The frame
indices the model saw are defined over that list, so `decode_video` rebuilds it from a demux pass
(no decoding), and `DecodedVideo.read_frames` decodes only up to the frames asked for.

Hostile files are bounded before any pixel is decoded: the frame size is read from the stream header and
refused over `max_frame_pixels`, and FFmpeg's own decoders (including the probing at open) get a pixel cap,
so a stream whose frames are larger than its header says fails instead of allocating them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from coglens.processing.video.errors import VideoInputError, VideoLimitError

if TYPE_CHECKING:
    import av.container
    import av.video.frame
    import av.video.stream

VideoSource = str | os.PathLike | bytes

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB
DEFAULT_MAX_DURATION_S = 3600.0
DEFAULT_MAX_FRAMES = 216_000  # one hour at 60 fps
DEFAULT_MAX_FRAME_PIXELS = 3840 * 2160  # 4K UHD, checked from the stream header before decoding

T = TypeVar("T")


@dataclass(frozen=True)
class VideoInfo:
    """What is known about a video after indexing it (no pixels)."""

    name: str  # the path, or "<N bytes>" for in-memory input
    width: int
    height: int
    num_frames: int  # decord's len(): packets of the video stream
    avg_fps: float  # the stream's average frame rate, as decord's get_avg_fps() reports it
    duration_s: float  # end of the last frame, relative to the stream start
    stream_start_s: float  # the stream's start time on the container clock
    codec: str


@dataclass(frozen=True, eq=False)
class DecodedVideo:
    """A video's frame index: per-frame timestamps in presentation order, and a way to fetch pixels.

    `timestamps` is (N, 2) float32 (start, end) seconds relative to the stream start, as decord's
    `get_frame_timestamp(range(N))` computes them: end = start + packet duration. Starts match
    decord 0.6.0 exactly; its wheels' FFmpeg 4 gave packets of B-frame streams a 1/frame-rate
    duration instead of the container's, so ends can differ on variable-rate files (nothing reads
    them for sampling). Frame `i` is the frame with the i-th smallest pts.
    """

    info: VideoInfo
    timestamps: np.ndarray
    pts: np.ndarray  # int64, presentation order, in time_base units
    time_base: Fraction
    keyframe_indices: np.ndarray  # sorted frame indices a decoder can start from
    stream_index: int
    source: str | bytes = field(repr=False)
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS

    @property
    def start_times(self) -> np.ndarray:
        """float32 start time of each frame relative to the stream start (what 'chat' sampling reads)."""
        return self.timestamps[:, 0]

    @property
    def container_times(self) -> np.ndarray:
        """float64 start time of each frame on the container clock (PyAV's `frame.time`)."""
        return self.pts.astype(np.float64) * float(self.time_base)

    def read_frames(self, indices: Sequence[int], *, seek: bool = True) -> np.ndarray:
        """Decode the frames at `indices` (repeats allowed) into a (T, H, W, 3) uint8 RGB array.

        Only the requested frames are kept in memory. With `seek`, the decoder jumps to the keyframe
        before a requested frame when that skips work; without it, one pass from the start is made.
        """
        frames = self.decode_frames(indices, _rgb24, seek=seek)
        if len({frame.shape for frame in frames}) > 1:
            raise VideoInputError(
                f"{self.info.name}: the frame size changes inside the video "
                f"({', '.join(sorted({f'{f.shape[1]}x{f.shape[0]}' for f in frames}))}), so the frames cannot be "
                "stacked; use load_video (which resizes each frame) or re-encode the video"
            )
        return np.stack(frames)

    def decode_frames(
        self, indices: Sequence[int], convert: Callable[[av.video.frame.VideoFrame], T], *, seek: bool = True
    ) -> list[T]:
        """`convert(frame)` of the frame at each of `indices` (repeats share one result), decoding each once.

        `convert` runs as each wanted frame is decoded, so only its results are kept: a caller that
        resizes there never holds a full-size copy of more than one frame. Frames over
        `max_frame_pixels` raise `VideoLimitError` before `convert` sees them.
        """
        wanted = sorted({int(i) for i in indices})
        if not wanted:
            raise VideoInputError(f"{self.info.name}: no frame indices given to read_frames")
        if wanted[0] < 0 or wanted[-1] >= self.info.num_frames:
            raise IndexError(
                f"{self.info.name}: frame indices must lie in [0, {self.info.num_frames}), got {wanted[0]}"
                f"..{wanted[-1]}"
            )
        with _open_container(self.source, self.info.name, self.max_frame_pixels) as container:
            stream = container.streams[self.stream_index]
            stream.thread_type = "AUTO"  # frame threading: same pixels, several cores
            stream.codec_context.options = _decoder_options(self.max_frame_pixels)
            found = _collect_frames(container, stream, self, wanted, self._checked(convert), seek=seek)
        return [found[int(i)] for i in indices]

    def _checked(self, convert: Callable[[av.video.frame.VideoFrame], T]) -> Callable[[av.video.frame.VideoFrame], T]:
        def checked(frame: av.video.frame.VideoFrame) -> T:
            _check_frame_size(self.info.name, frame.width, frame.height, self.max_frame_pixels)
            return convert(frame)

        return checked


def decode_video(
    src: VideoSource,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_duration_s: float = DEFAULT_MAX_DURATION_S,
    max_frames: int = DEFAULT_MAX_FRAMES,
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS,
) -> DecodedVideo:
    """Index a video file (path) or in-memory video (bytes) without decoding its pixels.

    Raises `VideoInputError` for a missing, empty, unreadable or audio-only input, a video stream
    without frames, without a decoder or without a frame size, and `VideoLimitError` when the input
    is over `max_bytes`, `max_duration_s`, `max_frames` or `max_frame_pixels` (width x height, from
    the stream header; each can be raised by passing a larger value).
    """
    name, source = _checked_source(src, max_bytes)
    with _open_container(source, name, max_frame_pixels) as container:
        stream = _video_stream(container, name)
        _check_frame_size(name, stream.codec_context.width, stream.codec_context.height, max_frame_pixels)
        time_base = stream.time_base or Fraction(1, 1)
        pts, durations, keyframe_pts = _scan_packets(container, stream, time_base, name, max_duration_s, max_frames)
        stream_start = stream.start_time if stream.start_time is not None else int(pts.min())
        order = np.argsort(pts, kind="stable")
        pts, durations = pts[order], durations[order]
        timestamps = _decord_timestamps(pts, durations, stream_start, time_base)
        info = VideoInfo(
            name=name,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            num_frames=len(pts),
            avg_fps=_average_fps(stream, timestamps),
            duration_s=float(timestamps[:, 1].max()),
            stream_start_s=float(stream_start * time_base),
            codec=stream.codec_context.name,
        )
        return DecodedVideo(
            info=info,
            timestamps=timestamps,
            pts=pts,
            time_base=time_base,
            keyframe_indices=np.unique(np.searchsorted(pts, keyframe_pts)),
            stream_index=stream.index,
            source=source,
            max_frame_pixels=max_frame_pixels,
        )


def _import_av() -> ModuleType:
    try:
        import av
    except ImportError as exc:
        raise ImportError("video input needs PyAV: pip install 'coglens[video]'") from exc
    return av


def _checked_source(src: VideoSource, max_bytes: int) -> tuple[str, str | bytes]:
    """Return a display name and what av.open takes, after the checks that need no decoder."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        name, size, source = f"<{len(data)} bytes>", len(data), data
    else:
        path = Path(src)
        name, source = str(path), str(path)
        if not path.exists():
            raise VideoInputError(f"{name}: no such file; check the path")
        if not path.is_file():
            raise VideoInputError(f"{name}: not a regular file; pass the path of a video file")
        size = path.stat().st_size
    if size == 0:
        raise VideoInputError(f"{name}: the file is empty (0 bytes); was the upload or download cut short?")
    if size > max_bytes:
        raise VideoLimitError(name, "max_bytes", size, max_bytes, "bytes")
    return name, source


def _decoder_options(max_frame_pixels: int) -> dict[str, str]:
    """FFmpeg's own cap on the pixels of a decoded frame: it refuses to allocate bigger ones.

    FFmpeg counts widths rounded up to the row alignment (up to 64 pixels), so the cap is twice the
    limit; the exact limit is checked on each decoded frame.
    """
    return {"max_pixels": str(2 * max_frame_pixels)}


def _check_frame_size(name: str, width: int, height: int, max_frame_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise VideoInputError(
            f"{name}: the video stream declares no frame size ({width}x{height}); re-encode it "
            "(e.g. ffmpeg -i in -c:v libx264 out.mp4)"
        )
    if width * height > max_frame_pixels:
        raise VideoLimitError(
            name, "max_frame_pixels", width * height, max_frame_pixels, "pixels", detail=f"{width}x{height} frames"
        )


def _video_stream(container: av.container.InputContainer, name: str) -> av.video.stream.VideoStream:
    stream = container.streams.best("video")
    if stream is None:
        found = ", ".join(sorted({s.type for s in container.streams})) or "none"
        raise VideoInputError(f"{name}: no video stream in this file (streams found: {found})")
    if stream.codec_context is None:
        raise VideoInputError(
            f"{name}: FFmpeg has no decoder for this video's codec; re-encode it (e.g. to H.264 in mp4)"
        )
    return stream


def _rgb24(frame: av.video.frame.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


@contextmanager
def _open_container(
    source: str | bytes, name: str, max_frame_pixels: int
) -> Iterator[av.container.InputContainer]:
    av = _import_av()
    try:
        # The decoder options also bind the decoders FFmpeg runs while probing the streams at open;
        # undecodable metadata text is replaced rather than failing the open.
        container = av.open(
            io.BytesIO(source) if isinstance(source, bytes) else source,
            mode="r",
            options=_decoder_options(max_frame_pixels),
            metadata_errors="replace",
        )
    except av.FFmpegError as exc:
        raise VideoInputError(
            f"{name}: not a readable video ({exc}); is it complete, and in a format FFmpeg reads "
            "(mp4, mkv, webm, mov, avi)?"
        ) from exc
    try:
        yield container
    except av.FFmpegError as exc:
        raise VideoInputError(
            f"{name}: the video data is corrupt ({exc}); re-encode or re-download it"
        ) from exc
    finally:
        container.close()


def _scan_packets(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    time_base: Fraction,
    name: str,
    max_duration_s: float,
    max_frames: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pts, duration, keyframe pts) of every packet of `stream`, in file order, as decord indexes them."""
    pts: list[int] = []
    durations: list[int] = []
    keyframe_pts: list[int] = []
    first_pts: int | None = stream.start_time
    for packet in container.demux(stream):
        if packet.size == 0:  # PyAV's end-of-stream flush packet, not a frame
            continue
        packet_pts = packet.pts if packet.pts is not None else packet.dts
        if packet_pts is None:
            raise VideoInputError(
                f"{name}: the video packets carry no timestamps; remux it into mp4 or mkv first "
                "(e.g. ffmpeg -i in -c copy out.mp4)"
            )
        if len(pts) == max_frames:
            raise VideoLimitError(name, "max_frames", len(pts) + 1, max_frames, "frames")
        first_pts = packet_pts if first_pts is None else first_pts
        seconds = float((packet_pts - first_pts) * time_base)
        if seconds > max_duration_s:
            raise VideoLimitError(name, "max_duration_s", seconds, max_duration_s, "s")
        pts.append(packet_pts)
        durations.append(packet.duration or 0)
        if packet.is_keyframe:
            keyframe_pts.append(packet_pts)
    if not pts:
        raise VideoInputError(f"{name}: the video stream has no frames")
    return (
        np.asarray(pts, dtype=np.int64),
        np.asarray(durations, dtype=np.int64),
        np.asarray(keyframe_pts, dtype=np.int64),
    )


def _decord_timestamps(
    pts: np.ndarray, durations: np.ndarray, stream_start: int, time_base: Fraction
) -> np.ndarray:
    """decord's (start, end) seconds: `(pts - start_time) * time_base` with its float32 intermediates.

    decord stores start_time in a float, so `pts - start_time` is a float32 subtraction of two
    rounded values before the double multiply; the result is stored as float32. Copying that keeps
    the timestamps bit-identical on long videos with fine time bases (pts above 2**24).
    """
    start = np.float32(stream_start)
    factor = time_base.numerator / time_base.denominator

    def seconds(ticks: np.ndarray) -> np.ndarray:
        return ((ticks.astype(np.float32) - start).astype(np.float64) * factor).astype(np.float32)

    return np.stack([seconds(pts), seconds(pts + durations)], axis=1)


def _average_fps(stream: av.video.stream.VideoStream, timestamps: np.ndarray) -> float:
    """The stream's avg_frame_rate (decord's get_avg_fps); frames over time when the file has none."""
    if stream.average_rate:
        return float(stream.average_rate)
    # decord would report NaN here and the 'base' strategy would fail; frames per second of
    # content is the rate that strategy's 60-second window needs.
    span = float(timestamps[:, 1].max() - timestamps[0, 0])
    return len(timestamps) / span if span > 0 else 1.0


def _collect_frames(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    video: DecodedVideo,
    wanted: list[int],
    convert: Callable[[av.video.frame.VideoFrame], T],
    *,
    seek: bool,
) -> dict[int, T]:
    """Decode forward (seeking to keyframes when that skips work) and keep only the wanted frames."""
    wanted_set = set(wanted)
    found: dict[int, T] = {}
    frames = _decode_from(container, stream, None)
    next_index = 0
    for target in wanted:
        if target in found:
            continue
        keyframe = _keyframe_before(video.keyframe_indices, target)
        seeked = seek and keyframe > next_index
        if seeked:
            frames = _decode_from(container, stream, int(video.pts[keyframe]))
        next_index = _decode_until(frames, video.pts, target, next_index, wanted_set, found, convert)
        if target not in found and seeked:
            # The seek landed past the target (unreliable keyframe flags): decode from the start.
            frames = _decode_from(container, stream, int(video.pts[0]))
            next_index = _decode_until(frames, video.pts, target, 0, wanted_set, found, convert)
        if target not in found:
            raise VideoInputError(
                f"{video.info.name}: frame {target} of {video.info.num_frames} could not be decoded; "
                "the file is probably truncated or corrupt"
            )
    return found


def _keyframe_before(keyframe_indices: np.ndarray, target: int) -> int:
    """The last keyframe at or before `target` (frame 0 when the index names none there)."""
    position = int(np.searchsorted(keyframe_indices, target, side="right")) - 1
    return int(keyframe_indices[position]) if position >= 0 else 0


def _decode_from(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, seek_pts: int | None
) -> Iterator[av.video.frame.VideoFrame]:
    if seek_pts is not None:
        container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
    return container.decode(stream)


def _decode_until(
    frames: Iterator[av.video.frame.VideoFrame],
    sorted_pts: np.ndarray,
    target: int,
    next_index: int,
    wanted: set[int],
    found: dict[int, T],
    convert: Callable[[av.video.frame.VideoFrame], T],
) -> int:
    """Pull frames until frame `target` has gone by; store the wanted ones. Returns the next index."""
    for frame in frames:
        index = int(np.searchsorted(sorted_pts, frame.pts)) if frame.pts is not None else next_index
        next_index = index + 1
        if index in wanted and index not in found:
            found[index] = convert(frame)
        if index >= target:
            break
    return next_index
