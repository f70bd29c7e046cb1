"""Draw grounding boxes on the image they refer to, for a quick look at what the model pointed at."""

from __future__ import annotations

import colorsys
from collections.abc import Iterable, Sequence

from PIL import Image, ImageDraw, ImageFont

from coglens.grounding.boxes import to_pixels
from coglens.grounding.parse import GroundedBox, GroundingResult

_GOLDEN_RATIO = 0.618033988749895  # hue step that keeps any number of successive colours far apart


def draw_boxes(
    image: Image.Image,
    result_or_boxes: GroundingResult | Iterable[GroundedBox | Sequence[int]],
    *,
    labels: bool = True,
    line_width: int | None = None,
) -> Image.Image:
    """A copy of ``image`` with each box outlined in its own colour and, with ``labels``, its phrase.

    Boxes are relative (0-999) and are mapped with ``to_pixels`` onto this image, so draw on the
    original image the answer was about (any size: the model saw a resized copy). A label is the
    box's phrase, or its 1-based number when it has none (plain tuples, empty phrases).
    ``line_width`` defaults to about 1/160 of the shorter side.
    """
    boxes = result_or_boxes.boxes if isinstance(result_or_boxes, GroundingResult) else list(result_or_boxes)
    canvas = image.copy() if image.mode in ("RGB", "RGBA") else image.convert("RGB")
    width, height = canvas.size
    line_width = line_width or max(2, round(min(width, height) / 160))
    font = ImageFont.load_default(size=max(10, round(min(width, height) / 40)))
    draw = ImageDraw.Draw(canvas)
    for index, box in enumerate(boxes):
        colour = _colour(index)
        rel, phrase = (box.box_rel, box.phrase) if isinstance(box, GroundedBox) else (box, "")
        x0, y0, x1, y1 = (round(value) for value in to_pixels(rel, width, height))
        outline = (min(x0, width - 1), min(y0, height - 1), min(x1, width - 1), min(y1, height - 1))
        draw.rectangle(outline, outline=colour, width=line_width)
        if labels:
            _draw_label(draw, phrase or str(index + 1), outline, colour, font, width)
    return canvas


def _draw_label(
    draw: ImageDraw.ImageDraw,
    label: str,
    outline: tuple[int, int, int, int],
    colour: tuple[int, int, int],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    image_width: int,
) -> None:
    """Label on a filled tab above the box's top-left corner, or just inside it at the top edge."""
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    padding = max(1, (bottom - top) // 5)
    tab_width, tab_height = right - left + 2 * padding, bottom - top + 2 * padding
    x = max(0, min(outline[0], image_width - tab_width))
    y = outline[1] - tab_height if outline[1] >= tab_height else outline[1]
    draw.rectangle((x, y, x + tab_width - 1, y + tab_height - 1), fill=colour)
    draw.text((x + padding - left, y + padding - top), label, fill=_text_colour(colour), font=font)


def _colour(index: int) -> tuple[int, int, int]:
    red, green, blue = colorsys.hsv_to_rgb((index * _GOLDEN_RATIO) % 1.0, 0.85, 0.95)
    return round(red * 255), round(green * 255), round(blue * 255)


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    red, green, blue = background
    luma = 0.299 * red + 0.587 * green + 0.114 * blue  # ITU-R BT.601: perceived brightness
    return (0, 0, 0) if luma > 140 else (255, 255, 255)
