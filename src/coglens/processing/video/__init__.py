"""CogVLM2-Video frames: decode with PyAV, sample like the released loader, transform to pixels.

>>> clip = load_video("clip.mp4")            # doctest: +SKIP
>>> clip.frames.shape, clip.indices[:3]     # doctest: +SKIP
(torch.Size([13, 3, 224, 224]), (0, 8, 16))
"""

from coglens.processing.video.decode import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DURATION_S,
    DEFAULT_MAX_FRAMES,
    DecodedVideo,
    VideoInfo,
    VideoSource,
    decode_video,
)
from coglens.processing.video.errors import VideoInputError, VideoLimitError
from coglens.processing.video.loader import TimeOrigin, VideoClip, load_video
from coglens.processing.video.sampling import Rounding, SamplingStrategy, sample_frame_indices
from coglens.processing.video.transform import (
    CLIP_MEAN,
    CLIP_STD,
    frames_from_images,
    frames_to_clip,
    transform_clip,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DURATION_S",
    "DEFAULT_MAX_FRAMES",
    "DecodedVideo",
    "Rounding",
    "SamplingStrategy",
    "TimeOrigin",
    "VideoClip",
    "VideoInfo",
    "VideoInputError",
    "VideoLimitError",
    "VideoSource",
    "decode_video",
    "frames_from_images",
    "frames_to_clip",
    "load_video",
    "sample_frame_indices",
    "transform_clip",
]
