"""``build_conversation_input_ids``: a query, its history and its image(s) -> the model's input tensors.

Reproduces THUDM's method of the same name (CogVLM-1, CogVLM2, CogVLM2-Video): ``[bos]``, the image span(s)
(``config.num_image_tokens`` placeholder ids of token type 1 per image or frame), then the prompt text
encoded in one ``tokenizer.encode(text, add_special_tokens=False)`` call (token type 0). Unlike the original,
it never changes the caller's tokenizer (THUDM's code sets ``tokenizer.pad_token_id = 128002``).

Multi-image extension (``allow_multiple_images=True``; the released checkpoints were trained with one image):
history entries may carry an image as a third element, ``(query, answer, image)``. Every image's span is put
at the start of the turn that introduced it, so spans are always separated by that turn's text: position ids
compress each contiguous vision run to three positions, and two touching spans would merge into one image.
The top-level ``images`` belong to the current turn; if no history turn carries an image they go right after
``[bos]`` instead, which is the original single-image layout. The text is encoded in one call per span,
so token boundaries can only differ from a single-call encoding at the start of an image's turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from coglens.modeling.routing import LANGUAGE_TOKEN_TYPE, VISION_TOKEN_TYPE, count_positions
from coglens.processing.errors import ContextLengthError, ConversationError
from coglens.processing.image import ImageSource, load_image, preprocess_image
from coglens.processing.template import render_turns, resolve_template

if TYPE_CHECKING:
    from coglens.modeling.configuration_cogvlm import CogvlmConfig

ImageInput = ImageSource | torch.Tensor  # a tensor is an already preprocessed (3, S, S) image
VideoInput = torch.Tensor | np.ndarray  # (T, 3, S, S) float frames, or uint8 (C, T, H, W) / (T, H, W, C)


@dataclass(frozen=True)
class _PastTurn:
    query: str
    answer: str
    image: Any | None  # an image (extension only) or None


def build_conversation_input_ids(
    tokenizer: Any,
    *,
    config: CogvlmConfig,
    query: str,
    history: Sequence[Sequence[Any]] | None = None,
    images: Sequence[Any] | Any | None = None,
    template_version: str | None = None,
    allow_multiple_images: bool = False,
) -> dict[str, Any]:
    """Build one sequence exactly as THUDM's ``model.build_conversation_input_ids`` does.

    ``tokenizer`` needs ``bos_token_id`` and ``encode(text, add_special_tokens=False)``. ``config`` is the
    checkpoint's ``CogvlmConfig`` or any object with the same ``is_video``, ``template_version``,
    ``num_image_tokens``, ``image_token_id``, ``bos_token_id``, ``vision_config.image_size`` and
    ``max_position_embeddings`` (``None``: no context check), such as ``CogvlmProcessor.layout``. ``history`` is a list
    of ``(query, answer)`` (or, with the extension, ``(query, answer, image)``) turns. ``images``: at most one
    image (PIL image, path, encoded bytes or a preprocessed (3, S, S) tensor); for CogVLM2-Video one clip.

    Returns ``input_ids``, ``token_type_ids``, ``attention_mask`` (1-D ``torch.long``) and ``images``: the
    (3, S, S) tensors in the order their spans appear (``[clip (T, 3, S, S)]`` for video), or ``None``.
    """
    if not isinstance(query, str):
        raise ConversationError(f"query must be a string, got {type(query).__name__}")
    template = resolve_template(template_version, config.template_version)
    past = _parse_history(history)
    current = _as_list(images)
    if config.is_video:
        ids, types, pixels = _video_layout(tokenizer, config, template, query, past, current)
    else:
        ids, types, pixels = _image_layout(tokenizer, config, template, query, past, current,
                                           allow_multiple_images)
    if config.max_position_embeddings is not None:  # None: a processor built without the model's limit
        check_context(types, max_positions=config.max_position_embeddings)
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "token_type_ids": torch.tensor(types, dtype=torch.long),
        "attention_mask": torch.ones(len(ids), dtype=torch.long),
        "images": pixels or None,
    }


def check_context(
    token_type_ids: Sequence[int] | torch.Tensor,
    *,
    max_positions: int,
    attention_mask: Sequence[int] | torch.Tensor | None = None,
    max_new_tokens: int = 0,
    param: str = "max_new_tokens",
) -> int:
    """Raise :class:`ContextLengthError` unless the prompt plus ``max_new_tokens`` fits in ``max_positions``.

    Returns the positions needed. Images count as three positions each, whatever their token count
    (:func:`~coglens.modeling.routing.count_positions`). ``param`` is the caller's name for the number of new
    tokens: the error names it when fewer new tokens would fit.
    """
    if attention_mask is not None:
        entries, types = torch.as_tensor(attention_mask).numel(), torch.as_tensor(token_type_ids).numel()
        if entries != types:
            raise ConversationError(f"attention_mask has {entries} entries for {types} token types")
    prompt = count_positions(token_type_ids, attention_mask)
    needed = prompt + max_new_tokens
    if needed <= max_positions:
        return needed
    room = max_positions - prompt
    new = f" + {max_new_tokens} new token{'s' if max_new_tokens != 1 else ''}" if max_new_tokens else ""
    too_long = f"the prompt takes {prompt} positions{new}, more than the model's context of {max_positions}"
    if max_new_tokens and room > 0:
        raise ContextLengthError(f"{param}={max_new_tokens} does not fit: {too_long}; at most {room} new tokens fit",
                                 param=param)
    raise ContextLengthError(
        f"{too_long} (max_position_embeddings in config.json); shorten the query or history, or drop images or "
        "frames"
    )


def _image_layout(
    tokenizer: Any, config: CogvlmConfig, template: str, query: str, past: list[_PastTurn],
    current: list[Any], allow_multiple_images: bool,
) -> tuple[list[int], list[int], list[torch.Tensor]]:
    history_images = [turn.image for turn in past if turn.image is not None]
    total = len(history_images) + len(current)
    if total > 1 and not allow_multiple_images:
        raise ConversationError(
            f"{total} images given, but CogVLM's prompt format takes at most one image per conversation; "
            "pass allow_multiple_images=True to give each image its own span at the start of the turn that "
            "introduced it (an extension: the released checkpoints were trained with one image)"
        )
    if len(current) > 1:
        raise ConversationError(
            f"{len(current)} images on the current turn; with allow_multiple_images each turn takes one "
            "image (spans in one turn would touch and merge): attach earlier images to history entries as "
            "(query, answer, image)"
        )
    if history_images and template == "base":
        raise ConversationError(
            "the 'base' template ignores history, so images attached to history turns have no place; "
            "use template_version='chat' or 'vqa'"
        )
    texts = render_turns(template, query, [(turn.query, turn.answer) for turn in past])
    current_image = current[0] if current else None
    if history_images:
        turn_images = [turn.image for turn in past] + [current_image]
    else:  # the original layout: the conversation's image right after bos
        turn_images = [current_image] + [None] * (len(texts) - 1)

    ids, types, pixels = [_bos_id(tokenizer, config)], [LANGUAGE_TOKEN_TYPE], []
    for image, text in _spans(texts, turn_images):
        if image is not None:
            pixels.append(_image_tensor(image, config.vision_config.image_size))
            _append(ids, types, [config.image_token_id] * config.num_image_tokens, VISION_TOKEN_TYPE)
        _append(ids, types, tokenizer.encode(text, add_special_tokens=False), LANGUAGE_TOKEN_TYPE)
    return ids, types, pixels


def _video_layout(
    tokenizer: Any, config: CogvlmConfig, template: str, query: str, past: list[_PastTurn],
    current: list[Any],
) -> tuple[list[int], list[int], list[torch.Tensor]]:
    if any(turn.image is not None for turn in past):
        raise ConversationError(
            "CogVLM2-Video takes one video per conversation: pass it in images, not in history"
        )
    if len(current) > 1:
        raise ConversationError(
            f"{len(current)} videos given; CogVLM2-Video takes one clip per conversation (images=[clip])"
        )
    ids, types, pixels = [_bos_id(tokenizer, config)], [LANGUAGE_TOKEN_TYPE], []
    if current:
        frames = _video_frames(current[0], config.vision_config.image_size)
        pixels.append(frames)
        clip_ids, clip_types = clip_layout(tokenizer, config, template, len(frames))
        ids += clip_ids
        types += clip_types
    text = "".join(render_turns(template, query, [(turn.query, turn.answer) for turn in past]))
    _append(ids, types, tokenizer.encode(text, add_special_tokens=False), LANGUAGE_TOKEN_TYPE)
    return ids, types, pixels


def clip_layout(tokenizer: Any, config: Any, template: str, num_frames: int) -> tuple[list[int], list[int]]:
    """Ids and token types of a CogVLM2-Video clip's frames: for ``chat`` each frame's span followed by its 0-based
    index as text, for ``base`` / ``vqa`` all frames in one vision run."""
    ids: list[int] = []
    types: list[int] = []
    span = [config.image_token_id] * config.num_image_tokens
    if template != "chat":
        _append(ids, types, span * num_frames, VISION_TOKEN_TYPE)
        return ids, types
    for index in range(num_frames):
        _append(ids, types, span, VISION_TOKEN_TYPE)
        _append(ids, types, tokenizer.encode(str(index), add_special_tokens=False), LANGUAGE_TOKEN_TYPE)
    return ids, types


def _spans(texts: list[str], images: list[Any | None]) -> list[tuple[Any | None, str]]:
    """Group turns into (image, text) spans: a new span starts at each turn that brings an image."""
    spans: list[tuple[Any | None, str]] = []
    for text, image in zip(texts, images, strict=True):
        if image is not None or not spans:
            spans.append((image, text))
        else:
            spans[-1] = (spans[-1][0], spans[-1][1] + text)
    return spans


def _parse_history(history: Sequence[Sequence[Any]] | None) -> list[_PastTurn]:
    turns = []
    for index, entry in enumerate(history or []):
        if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3):
            raise ConversationError(
                f"history[{index}] must be a (query, answer) or (query, answer, image) tuple, "
                f"got {entry!r:.80}"
            )
        old_query, answer, *image = entry
        if not isinstance(old_query, str) or not isinstance(answer, str):
            raise ConversationError(f"history[{index}]: query and answer must be strings, got {entry!r:.80}")
        turns.append(_PastTurn(old_query, answer, image[0] if image else None))
    return turns


def _as_list(images: Sequence[Any] | Any | None) -> list[Any]:
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return [image for image in images if image is not None]
    return [images]  # a lone image or clip


def _image_tensor(image: ImageInput, image_size: int) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        return preprocess_image(load_image(image), image_size)
    expected = (3, image_size, image_size)
    if tuple(image.shape) != expected or not image.is_floating_point():
        raise ConversationError(
            f"a tensor image must be a preprocessed float tensor of shape {expected}, got {image.dtype} "
            f"{tuple(image.shape)}; pass a PIL image or a path to have it resized and normalised"
        )
    return image


def _video_frames(clip: VideoInput, image_size: int) -> torch.Tensor:
    """(T, 3, S, S) frames: float input is taken as already transformed, uint8 is transformed here."""
    tensor = torch.from_numpy(clip) if isinstance(clip, np.ndarray) else clip
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4:
        raise ConversationError(
            "a CogVLM2-Video clip must be a 4-D tensor: float (T, 3, S, S) frames already transformed, or "
            f"uint8 (C, T, H, W) / (T, H, W, C) pixels; got {getattr(clip, 'shape', type(clip).__name__)}"
        )
    if tensor.is_floating_point():
        if tuple(tensor.shape[1:]) != (3, image_size, image_size):
            raise ConversationError(
                f"float clip frames must be (T, 3, {image_size}, {image_size}), got {tuple(tensor.shape)}"
            )
        return tensor
    if tensor.dtype != torch.uint8:
        raise ConversationError(
            f"clip pixels must be uint8 (or already transformed float frames), got {tensor.dtype}"
        )
    channels_first, channels_last = tensor.shape[0] == 3, tensor.shape[-1] == 3
    if channels_first == channels_last:
        raise ConversationError(
            f"cannot tell the channel axis of a uint8 clip of shape {tuple(tensor.shape)}; pass (C, T, H, W) "
            "or (T, H, W, C) with exactly one axis of size 3"
        )
    from coglens.processing.video import transform_clip  # only raw clips need the video package

    return transform_clip(tensor if channels_first else tensor.permute(3, 0, 1, 2), image_size)


def _bos_id(tokenizer: Any, config: CogvlmConfig) -> int:
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else config.bos_token_id
    if bos is None:
        raise ConversationError("neither the tokenizer nor the config defines a bos token id")
    return bos


def _append(ids: list[int], types: list[int], new_ids: list[int], token_type: int) -> None:
    ids.extend(new_ids)
    types.extend([token_type] * len(new_ids))

