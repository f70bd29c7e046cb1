"""Grounding boxes of cogvlm-grounding-generalist: parse them from answers, map, draw, and prompt for them.

Boxes are ``[[x0,y0,x1,y1]]`` with coordinates = relative position x 1000 as three digits (000-999),
top-left origin; several boxes for one phrase share a bracket, separated by ``;``.
"""

from coglens.grounding.boxes import (
    BoxPx,
    BoxRel,
    InvalidBoxError,
    format_box,
    format_boxes,
    from_pixels,
    to_pixels,
    validate_box_rel,
)
from coglens.grounding.draw import draw_boxes
from coglens.grounding.parse import BoxError, GroundedBox, GroundingResult, MalformedBoxesError, parse_boxes
from coglens.grounding.prompts import (
    InvalidPromptInputError,
    caption_with_boxes_prompt,
    referring_expression_prompt,
    region_description_prompt,
)

__all__ = [
    "BoxError",
    "BoxPx",
    "BoxRel",
    "GroundedBox",
    "GroundingResult",
    "InvalidBoxError",
    "InvalidPromptInputError",
    "MalformedBoxesError",
    "caption_with_boxes_prompt",
    "draw_boxes",
    "format_box",
    "format_boxes",
    "from_pixels",
    "parse_boxes",
    "referring_expression_prompt",
    "region_description_prompt",
    "to_pixels",
    "validate_box_rel",
]
