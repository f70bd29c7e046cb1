"""One conversation with a model: its history, the image or video it is about, and how each turn is prompted.

Shared by the terminal chat and the web demo. The released checkpoints were trained with one image per
conversation, so by default a new image starts a new conversation (as THUDM's demos do). With
``multi_image=True`` the history is kept and each image is attached to the turn that introduced it, through
the multi-image extension of ``build_conversation_input_ids`` (history items ``(query, answer, image)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from ..engine import GenerationRequest, SamplingParams
from ..grounding import GroundingResult, parse_boxes
from ..processing.template import resolve_template


class ChatMediaError(ValueError):
    """An image given to a video model, a video given to an image model, or media the session cannot use."""


@dataclass(frozen=True)
class Media:
    """An image or a video clip, ready for the model, with what a person sees of it."""

    kind: Literal["image", "video"]
    source: str  # the path (or "upload") it came from, for transcripts
    pixels: torch.Tensor  # a preprocessed (3, S, S) image or a (T, 3, S, S) clip
    picture: Image.Image | None  # the original image, to draw grounding boxes on (None for a video)


@dataclass
class Turn:
    query: str
    answer: str
    finish_reason: str  # "stop", "length" or "abort" (interrupted)
    conversation: int  # counts up at every clear or new-conversation image
    media: Media | None  # the image or video this turn was asked about
    brought_media: bool  # this turn introduced ``media`` (what the multi-image prompt attaches it to)
    grounding: GroundingResult = field(init=False)

    def __post_init__(self) -> None:
        self.grounding = parse_boxes(self.answer)


class ChatSession:
    def __init__(self, pipe: Any, *, template: str | None = None, multi_image: bool = False) -> None:
        self.pipe = pipe
        self.template = resolve_template(template, pipe.config.template_version)
        self.multi_image = multi_image
        if multi_image and self.template == "base":
            raise ChatMediaError(
                "--multi-image keeps images in the history, but the 'base' template (used by --grounding) "
                "has no history; use the chat or vqa template, or leave --multi-image off"
            )
        if multi_image and self.pipe.config.is_video:
            raise ChatMediaError(
                "--multi-image is for image models; CogVLM2-Video takes one video per conversation"
            )
        self.turns: list[Turn] = []  # every turn of the session, for the transcript
        self.conversation = 1
        self.media: Media | None = None  # the conversation's image/video (the latest one, with multi_image)
        self._media_is_new = False  # with multi_image: ``media`` goes with the next turn

    @property
    def history(self) -> list[Turn]:
        """The turns of the current conversation."""
        return [turn for turn in self.turns if turn.conversation == self.conversation]

    def clear(self) -> None:
        """Forget the history; the image or video stays for the next question."""
        if self.history:
            self.conversation += 1
        self._media_is_new = self.media is not None

    def load_image(self, source: str | Path | Image.Image) -> Media:
        from ..processing.image import load_image, preprocess_image

        if self.pipe.config.is_video:
            raise ChatMediaError(f"{self.pipe.model_path} is a video model: give it a video (/video PATH)")
        picture = load_image(source)
        pixels = preprocess_image(picture, self.pipe.config.vision_config.image_size)
        return Media("image", _describe(source), pixels, picture)

    def load_video(self, source: str | Path) -> Media:
        from ..processing.video import load_video

        if not self.pipe.config.is_video:
            raise ChatMediaError(
                f"{self.pipe.model_path} is an image model ({self.pipe.config.variant}); videos need a "
                "CogVLM2-Video checkpoint, e.g. --model tiny:cogvlm2-video"
            )
        clip = load_video(source, image_size=self.pipe.config.vision_config.image_size)
        return Media("video", _describe(source), clip.frames, None)

    def set_media(self, media: Media | None) -> bool:
        """Use ``media`` from the next question on; returns True when that started a new conversation."""
        new_conversation = not self.multi_image and bool(self.history)
        if new_conversation:
            self.conversation += 1
        self.media = media
        self._media_is_new = media is not None
        return new_conversation

    def request(self, query: str, params: SamplingParams) -> GenerationRequest:
        if self.multi_image:
            history: list[tuple[Any, ...]] = [
                (turn.query, turn.answer, turn.media.pixels if turn.brought_media and turn.media else None)
                for turn in self.history
            ]
            images = [self.media.pixels] if self.media is not None and self._media_is_new else None
        else:
            history = [(turn.query, turn.answer) for turn in self.history]
            images = [self.media.pixels] if self.media is not None else None
        return self.pipe.request(query, params=params, images=images, history=history, template=self.template,
                                 allow_multiple_images=self.multi_image)

    def record(self, query: str, answer: str, finish_reason: str) -> Turn:
        """Add an answered (or interrupted: its partial answer is kept) turn to the history."""
        turn = Turn(query, answer, finish_reason, self.conversation, self.media, self._media_is_new)
        self.turns.append(turn)
        self._media_is_new = False
        return turn


def _describe(source: str | Path | Image.Image) -> str:
    return str(source) if isinstance(source, (str, Path)) else "upload"
