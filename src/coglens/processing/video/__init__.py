"""CogVLM2-Video frames: decode with PyAV, sample like the released loader, transform to pixels.

>>> clip = load_video("clip.mp4")            # doctest: +SKIP
>>> clip.frames.shape, clip.indices[:3]     # doctest: +SKIP
(torch.Size([13, 3, 224, 224]), (0, 8, 16))

The names below load on first use (PEP 562): ``coglens.processing.video.strategies`` stays light to import.
"""

from coglens._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".decode": ("DEFAULT_MAX_BYTES", "DEFAULT_MAX_DURATION_S", "DEFAULT_MAX_FRAME_PIXELS", "DEFAULT_MAX_FRAMES",
                "DecodedVideo", "VideoInfo",
                "VideoSource", "decode_video"),
    ".errors": ("VideoInputError", "VideoLimitError"),
    ".loader": ("TimeOrigin", "VideoClip", "load_video", "sampled_pixels"),
    ".sampling": ("Rounding", "sample_frame_indices"),
    ".strategies": ("SAMPLING_STRATEGIES", "SamplingStrategy", "default_strategy"),
    ".transform": ("CLIP_MEAN", "CLIP_STD", "frames_from_images", "frames_to_clip", "transform_clip",
                   "transform_frame"),
})
