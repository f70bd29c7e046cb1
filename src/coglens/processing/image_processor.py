"""``CogvlmImageProcessor``: CogVLM's image preprocessing as a transformers image processor.

It wraps :func:`coglens.processing.image.preprocess_image` (``Resize((S, S), bicubic)`` -> ``ToTensor`` ->
``Normalize`` with the CLIP constants, bit-identical to THUDM's torchvision pipeline), so it can be saved and
loaded with ``save_pretrained`` / ``from_pretrained`` (``preprocessor_config.json``) and found by
``AutoImageProcessor`` once ``coglens`` is imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ImagesKwargs

from coglens.processing.errors import ImageInputError, ProcessingError
from coglens.processing.image import CLIP_MEAN, CLIP_STD, load_image, preprocess_image

if TYPE_CHECKING:
    from coglens.modeling.configuration_cogvlm import CogvlmConfig

DEFAULT_IMAGE_SIZE = 490  # CogVLM-1's vision tower (CogvlmVisionConfig's default); CogVLM2 uses 1344, the video 224
_FIXED_PIPELINE = frozenset({
    "do_convert_rgb", "do_resize", "size", "default_to_square", "crop_size", "do_rescale", "rescale_factor",
    "do_normalize", "do_pad", "pad_size", "do_center_crop", "data_format", "input_data_format",
})
_BOOKKEEPING = ("image_processor_type", "processor_class", "feature_extractor_type", "_processor_class")


class CogvlmImageProcessorKwargs(ImagesKwargs, total=False):
    image_size: int


class CogvlmImageProcessor(BaseImageProcessor):
    """Images -> ``pixel_values`` (N, 3, S, S) float32, exactly as the original CogVLM code preprocesses them.

    Each image is resized to ``image_size`` x ``image_size`` with ``resample`` (bicubic; aspect ratio ignored),
    scaled to [0, 1] and normalised with ``image_mean`` / ``image_std`` (CLIP's). Accepted images: PIL images,
    paths, encoded bytes, and uint8 arrays or tensors (H, W, C), (C, H, W) or (H, W). Float arrays are refused:
    the pipeline starts from 8-bit pixels (pass an already preprocessed (3, S, S) tensor to the processor
    instead, which uses it as is).
    """

    valid_kwargs = CogvlmImageProcessorKwargs
    model_input_names = ["pixel_values"]
    image_size = DEFAULT_IMAGE_SIZE
    image_mean = CLIP_MEAN
    image_std = CLIP_STD
    resample = int(Image.Resampling.BICUBIC)

    def __init__(
        self,
        image_size: int = DEFAULT_IMAGE_SIZE,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        resample: int | Image.Resampling | None = None,
        **kwargs: Any,
    ) -> None:
        for key in _BOOKKEEPING:
            kwargs.pop(key, None)
        unsupported = sorted(key for key, value in kwargs.items() if key in _FIXED_PIPELINE and value is not None)
        if unsupported:
            raise ProcessingError(
                f"CogvlmImageProcessor does not take {', '.join(unsupported)}: its pipeline is fixed (resize to "
                "image_size x image_size, scale by 1/255, normalise with image_mean / image_std)"
            )
        kwargs = {key: value for key, value in kwargs.items() if key not in _FIXED_PIPELINE}
        super().__init__(**kwargs)
        self.image_size = _check_size(image_size)
        self.image_mean = _check_triple(CLIP_MEAN if image_mean is None else image_mean, "image_mean")
        self.image_std = _check_triple(CLIP_STD if image_std is None else image_std, "image_std")
        if any(value == 0 for value in self.image_std):
            raise ProcessingError(f"image_std must not contain 0, got {self.image_std}")
        self.resample = _check_resample(Image.Resampling.BICUBIC if resample is None else resample)

    @classmethod
    def from_config(cls, config: CogvlmConfig, **kwargs: Any) -> CogvlmImageProcessor:
        """The image processor of a checkpoint: ``image_size`` from its ``vision_config.image_size``."""
        return cls(image_size=config.vision_config.image_size, **kwargs)

    def preprocess(
        self,
        images: Any,
        return_tensors: str | None = "pt",
        *,
        image_size: int | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        resample: int | Image.Resampling | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """One image or a list of images -> ``BatchFeature({"pixel_values": (N, 3, S, S) float32})``.

        ``return_tensors``: ``"pt"`` (default; ``None`` gives the same) or ``"np"``. The keyword arguments
        override the processor's own settings for this call.
        """
        if kwargs:
            raise ProcessingError(
                f"CogvlmImageProcessor.preprocess got unsupported arguments {sorted(kwargs)}; it takes "
                "return_tensors, image_size, image_mean, image_std and resample"
            )
        if return_tensors not in (None, "pt", "np"):
            raise ProcessingError(f"return_tensors={return_tensors!r} is not supported; use 'pt' or 'np'")
        size = self.image_size if image_size is None else _check_size(image_size)
        mean = self.image_mean if image_mean is None else _check_triple(image_mean, "image_mean")
        std = self.image_std if image_std is None else _check_triple(image_std, "image_std")
        method = self.resample if resample is None else _check_resample(resample)
        flat = _flat_images(images)
        if not flat:
            raise ImageInputError("no images given; pass an image or a non-empty list of images")
        pixel_values = torch.stack([
            preprocess_image(_to_pil(image), size, mean=mean, std=std, resample=method) for image in flat
        ])
        if return_tensors == "np":
            return BatchFeature({"pixel_values": pixel_values.numpy()})
        return BatchFeature({"pixel_values": pixel_values})


def _flat_images(images: Any) -> list[Any]:
    if isinstance(images, (list, tuple)):
        flat: list[Any] = []
        for item in images:
            flat.extend(item if isinstance(item, (list, tuple)) else [item])
        return flat
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)  # a batch of uint8 pixel arrays
    return [images]


def _to_pil(image: Any) -> Image.Image:
    """Any accepted image -> a decoded RGB PIL image (via :func:`load_image`, as the conversation builder does)."""
    if isinstance(image, (Image.Image, str, Path, bytes, bytearray, memoryview)):
        return load_image(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ImageInputError(
                f"an image array must hold uint8 pixels, got {image.dtype}; CogVLM's pipeline starts from 8-bit "
                "pixels (pass a PIL image, or give an already preprocessed (3, S, S) float tensor to the processor)"
            )
        if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
            image = np.moveaxis(image, 0, -1)  # (C, H, W) -> (H, W, C)
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
            raise ImageInputError(
                f"cannot read an image array of shape {tuple(image.shape)}; pass (H, W, C), (C, H, W) or (H, W) "
                "uint8 pixels with 1, 3 or 4 channels"
            )
        return load_image(Image.fromarray(np.ascontiguousarray(image)))
    raise ImageInputError(
        f"cannot read an image from a {type(image).__name__}; pass a PIL image, a path, encoded bytes or uint8 pixels"
    )


def _check_size(image_size: Any) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size <= 0:
        raise ProcessingError(f"image_size must be a positive int, got {image_size!r}")
    return int(image_size)


def _check_triple(values: Sequence[float], name: str) -> tuple[float, float, float]:
    if isinstance(values, (int, float)):
        values = (values,) * 3
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise ProcessingError(f"{name} must have one value per RGB channel, got {values}")
    return values  # type: ignore[return-value]


def _check_resample(resample: Any) -> int:
    try:
        return int(Image.Resampling(int(resample)))
    except (TypeError, ValueError) as exc:
        raise ProcessingError(f"resample must be a PIL resampling filter, got {resample!r}") from exc
