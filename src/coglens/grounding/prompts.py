"""Prompts for the tasks of cogvlm-grounding-generalist, worded as the model was trained on them.

The grounding checkpoints use the ``base`` template: send these texts as they are, with the image.
"""

from __future__ import annotations

from collections.abc import Sequence

from coglens.grounding.boxes import format_box, from_pixels

CAPTION_WITH_BOXES_PROMPT = (
    "Can you provide a description of the image and include the coordinates [[x0,y0,x1,y1]] "
    "for each mentioned object?"
)
REFERRING_EXPRESSION_TEMPLATE = (
    "Can you point out {expression} in the image and provide the bounding boxes of their location?"
)
REGION_DESCRIPTION_TEMPLATE = "Tell me what you see within the designated area {box} in the picture."


class InvalidPromptInputError(ValueError):
    """An argument of a grounding prompt helper cannot make a valid prompt."""


def caption_with_boxes_prompt() -> str:
    """Grounded captioning: a description with a box after each object it mentions."""
    return CAPTION_WITH_BOXES_PROMPT


def referring_expression_prompt(expression: str) -> str:
    """Referring expression comprehension: boxes for the objects ``expression`` describes."""
    expression = expression.strip()
    if not expression:
        raise InvalidPromptInputError(
            "referring_expression_prompt needs a non-empty expression, e.g. 'the dog on the left'"
        )
    return REFERRING_EXPRESSION_TEMPLATE.format(expression=expression)


def region_description_prompt(
    box_px_or_rel: Sequence[float], *, width: int | None = None, height: int | None = None
) -> str:
    """Region description for one box: pixels when ``width`` and ``height`` are given, else 0-999."""
    if (width is None) != (height is None):
        raise InvalidPromptInputError(
            "region_description_prompt needs both width and height for a pixel box, "
            "or neither for a relative 0-999 box"
        )
    box_rel = box_px_or_rel if width is None else from_pixels(box_px_or_rel, width, height)
    return REGION_DESCRIPTION_TEMPLATE.format(box=format_box(box_rel))
