"""The pydantic base of every protocol's request models: unknown fields are accepted and logged, not errors.

Clients of TGI, vLLM and MindIE send fields we have no use for (``adapter_id``, ``watermark``, ``typical_p``,
``batch_size``, ...); refusing them would break real clients, so they are dropped with a debug line.
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

logger = logging.getLogger("coglens.serve.protocol")


class WireModel(BaseModel):
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _log_ignored_fields(self) -> WireModel:
        if self.model_extra:
            logger.debug("%s: ignoring unknown fields %s", type(self).__name__, sorted(self.model_extra))
        return self


def _stop_list(value: object) -> object:
    """A stop string or a list of them; an empty one would end every answer at once, so it is refused."""
    stops = [] if value is None else [value] if isinstance(value, str) else value
    if isinstance(stops, list) and any(isinstance(s, str) and not s for s in stops):
        raise ValueError("stop strings must not be empty")
    return stops


StopList = Annotated[list[str], BeforeValidator(_stop_list)]


class ResponseModel(BaseModel):
    """Base of response bodies: strict about what we send."""

    model_config = ConfigDict(extra="forbid")


# Typed prompt parts: OpenAI's content parts plus ``video_url``, shared by every protocol here because the
# MindIE guides send the same parts to all of them. A URL may be a plain string or ``{"url": ...}``.


class MediaURL(WireModel):
    url: str
    detail: str | None = None  # OpenAI's image detail level; CogVLM always sees one fixed-size image


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class ImagePart(WireModel):
    type: Literal["image_url"]
    image_url: MediaURL | str


class VideoPart(WireModel):
    type: Literal["video_url"]
    video_url: MediaURL | str


ContentPart = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]
