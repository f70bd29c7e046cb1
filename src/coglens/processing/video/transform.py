"""Turn uint8 RGB frames into CogVLM2-Video's (T, 3, S, S) float32 pixel tensor.

The order is the released model's (`build_conversation_input_ids` with pytorchvideo/torchvision):
x / 255 -> normalise -> scale the short side to S (long side `floor(long / short * S)`, bilinear,
align_corners=False, NO antialias) -> centre crop S x S at `int(round((h - S) / 2))` (Python's
round, half to even). Antialiasing or a half-up crop offset would change the pixels the model
sees by up to 0.4 and 3.0 on the parity fixtures, so neither is "fixed" here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from coglens.processing.image import CLIP_MEAN, CLIP_STD  # the same statistics as the image path
from coglens.processing.video.errors import VideoInputError


def transform_clip(clip: torch.Tensor, image_size: int) -> torch.Tensor:
    """(C=3, T, H, W) uint8 RGB clip -> (T, 3, image_size, image_size) float32 model input."""
    if clip.dim() != 4 or clip.shape[0] != 3 or clip.dtype != torch.uint8:
        raise VideoInputError(
            f"expected a (3, T, H, W) uint8 RGB clip, got {tuple(clip.shape)} {clip.dtype}; "
            "use frames_to_clip() for (T, H, W, 3) frames"
        )
    if image_size < 1:
        raise VideoInputError(f"image_size must be positive, got {image_size}")
    # Contiguous input and in-place normalisation: the same float32 operations as the original,
    # without two more full-size temporaries (a 24-frame 720p clip is 265 MB in float32).
    x = clip.contiguous() / 255.0
    x.sub_(torch.tensor(CLIP_MEAN, dtype=x.dtype).view(3, 1, 1, 1))
    x.div_(torch.tensor(CLIP_STD, dtype=x.dtype).view(3, 1, 1, 1))
    height, width = x.shape[-2:]
    if width < height:
        size = (int(math.floor(height / width * image_size)), image_size)
    else:
        size = (image_size, int(math.floor(width / height * image_size)))
    # (C, T, H, W) is resized as a batch of C images with T channels: every frame alike.
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
    top = int(round((size[0] - image_size) / 2.0))
    left = int(round((size[1] - image_size) / 2.0))
    x = x[..., top : top + image_size, left : left + image_size]
    return x.transpose(0, 1).contiguous()


def frames_to_clip(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(T, H, W, 3) uint8 RGB frames (numpy or torch) -> the (3, T, H, W) layout `transform_clip` takes."""
    tensor = torch.as_tensor(frames)
    if tensor.dim() != 4 or tensor.shape[-1] != 3 or tensor.dtype != torch.uint8:
        raise VideoInputError(
            f"expected (T, H, W, 3) uint8 RGB frames, got {tuple(tensor.shape)} {tensor.dtype}"
        )
    return tensor.permute(3, 0, 1, 2)


def frames_from_images(images: Sequence[Image.Image | str | os.PathLike], image_size: int) -> torch.Tensor:
    """Use a list of images (PIL or paths, any sizes) as video frames: (T, 3, S, S) float32.

    Each image is transformed on its own, which equals transforming a clip of same-size frames.
    """
    if not images:
        raise VideoInputError("frames_from_images needs at least one image")
    return torch.stack([transform_frame(_rgb_array(image), image_size) for image in images])


def transform_frame(frame: np.ndarray, image_size: int) -> torch.Tensor:
    """One (H, W, 3) uint8 RGB frame -> its (3, S, S) float32 row of `transform_clip`'s output.

    Every frame is resized on its own in `transform_clip` too, so this equals transforming the whole
    clip, while holding one frame at full size in float32 instead of all of them.
    """
    return transform_clip(frames_to_clip(frame[None]), image_size)[0]


def _rgb_array(image: Image.Image | str | os.PathLike) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))
    try:
        with Image.open(image) as opened:
            return np.array(opened.convert("RGB"))
    except (OSError, Image.DecompressionBombError) as exc:
        raise VideoInputError(
            f"{image}: cannot be read as an image ({exc}); pass a PIL image or an image path"
        ) from exc
