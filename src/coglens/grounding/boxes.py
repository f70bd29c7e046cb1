"""Box values in CogVLM's grounding notation: validation, ``[[x0,y0,x1,y1]]`` text, pixel mapping.

A relative box holds four ints in 0-999 (top-left origin): coordinate = relative position x 1000,
truncated so that the right/bottom edge of the image still fits in three digits. Pixel coordinates
follow the same convention both ways: ``pixel = rel / 1000 * size`` and ``rel = round(pixel / size
* 1000)`` clamped to 0-999, so ``from_pixels(to_pixels(b, w, h), w, h) == b`` for every valid box.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

BoxRel = tuple[int, int, int, int]
BoxPx = tuple[float, float, float, float]

REL_MAX = 999  # three zero-padded digits
REL_SCALE = 1000  # relative position x 1000


class InvalidBoxError(ValueError):
    """A box given to a grounding helper is not a valid (x0, y0, x1, y1) box."""


def validate_box_rel(box_rel: Sequence[int]) -> BoxRel:
    """Return ``box_rel`` as a tuple of four ints in 0-999 with x0 <= x1 and y0 <= y1, or raise."""
    if len(box_rel) != 4:
        raise InvalidBoxError(f"a box needs 4 coordinates (x0, y0, x1, y1), got {len(box_rel)}: {box_rel!r}")
    for value in box_rel:
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise InvalidBoxError(
                f"relative box coordinates must be ints in 0-{REL_MAX}, got {value!r} in {box_rel!r}; "
                "convert a pixel box with from_pixels(box, width, height)"
            )
        if not 0 <= value <= REL_MAX:
            raise InvalidBoxError(
                f"relative box coordinate {value} in {box_rel!r} is outside 0-{REL_MAX}; "
                "convert a pixel box with from_pixels(box, width, height)"
            )
    x0, y0, x1, y1 = (int(value) for value in box_rel)
    _check_order(x0, y0, x1, y1, box_rel)
    return x0, y0, x1, y1


def format_box(box_rel: Sequence[int]) -> str:
    """``(86, 540, 400, 760)`` -> ``"[[086,540,400,760]]"``."""
    return format_boxes([box_rel])


def format_boxes(boxes_rel: Sequence[Sequence[int]]) -> str:
    """Several boxes in one bracket, separated by ``;``, as the model writes them for one phrase."""
    if not boxes_rel:
        raise InvalidBoxError("format_boxes needs at least one box: CogVLM has no empty '[[]]' bracket")
    items = (",".join(f"{value:03d}" for value in validate_box_rel(box)) for box in boxes_rel)
    return "[[" + ";".join(items) + "]]"


def to_pixels(box_rel: Sequence[int], width: int, height: int) -> BoxPx:
    """Relative 0-999 box -> pixel box of a ``width`` x ``height`` image: ``rel / 1000 * size``.

    The result is in float pixels (top-left origin); round it where integer pixels are needed
    (``PIL.Image.crop`` accepts it as is).
    """
    _check_size(width, height)
    x0, y0, x1, y1 = validate_box_rel(box_rel)
    # multiplying first keeps the ints exact, so there is one rounding: 86 -> 55.04 on 640 px, not 55.0399...
    return (x0 * width / REL_SCALE, y0 * height / REL_SCALE, x1 * width / REL_SCALE, y1 * height / REL_SCALE)


def from_pixels(box_px: Sequence[float], width: int, height: int) -> BoxRel:
    """Pixel box of a ``width`` x ``height`` image -> relative 0-999 box (rounded, clamped to the image)."""
    _check_size(width, height)
    if len(box_px) != 4:
        raise InvalidBoxError(f"a box needs 4 coordinates (x0, y0, x1, y1), got {len(box_px)}: {box_px!r}")
    for value in box_px:
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise InvalidBoxError(
                f"pixel box coordinates must be finite numbers, got {value!r} in {box_px!r}"
            )
    x0, y0, x1, y1 = box_px
    _check_order(x0, y0, x1, y1, box_px)
    return (_to_rel(x0, width), _to_rel(y0, height), _to_rel(x1, width), _to_rel(y1, height))


def _to_rel(pixel: float, size: int) -> int:
    return min(REL_MAX, max(0, round(pixel / size * REL_SCALE)))


def _check_order(x0: float, y0: float, x1: float, y1: float, box: Sequence[float]) -> None:
    if x1 < x0 or y1 < y0:
        raise InvalidBoxError(
            f"box {box!r} has its bottom-right corner above or left of its top-left corner; "
            "boxes are (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1"
        )


def _check_size(width: int, height: int) -> None:
    for name, size in (("width", width), ("height", height)):
        if isinstance(size, bool) or not isinstance(size, Integral) or size <= 0:
            raise InvalidBoxError(f"image {name} must be a positive int, got {size!r}")
