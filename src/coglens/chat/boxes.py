"""The "draw the boxes of an answer" step, shared by the terminal chat and the web demo."""

from __future__ import annotations

from PIL import Image

from ..grounding import GroundingResult, draw_boxes, format_box


def boxed_picture(picture: Image.Image | None, result: GroundingResult) -> Image.Image | None:
    """``picture`` with the answer's boxes drawn, or None when there is no picture or no box."""
    if picture is None or not result.boxes:
        return None
    return draw_boxes(picture, result)


def describe_boxes(result: GroundingResult, picture: Image.Image | None = None) -> list[str]:
    """One line per box (with pixel coordinates when the picture is known) and per malformed box."""
    lines = []
    for number, box in enumerate(result.boxes, 1):
        line = f"[{number}] {box.phrase or '(no phrase)'} {format_box(box.box_rel)}"
        if picture is not None:
            x0, y0, x1, y1 = (round(value) for value in box.to_pixels(*picture.size))
            line += f" = pixels ({x0}, {y0})-({x1}, {y1})"
        lines.append(line)
    lines += [f"malformed box at {error}" for error in result.errors]
    return lines
