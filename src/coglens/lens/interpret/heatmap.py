"""A patch grid of attention values as a coloured picture over the image (numpy + Pillow, no matplotlib)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# An "inferno"-like ramp (dark purple -> red -> yellow): dark where little attention goes, bright where much.
_RAMP_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_RAMP_COLOURS = np.array(
    [(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], dtype=float
)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB of shape ``values.shape + (3,)``."""
    clipped = np.clip(values, 0.0, 1.0)
    channels = [np.interp(clipped, _RAMP_STOPS, _RAMP_COLOURS[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def attention_overlay(image: Image.Image, grid: np.ndarray, *, alpha: float = 0.5) -> Image.Image:
    """The image (its own size) blended with the grid, scaled to its maximum, upsampled and colour-mapped."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1] (0: only the image, 1: only the heat map)")
    peak = float(grid.max())
    scaled = (grid / peak if peak > 0 else np.zeros_like(grid)).astype(np.float32)
    heat = np.asarray(Image.fromarray(scaled).resize(image.size, Image.Resampling.BILINEAR))
    return Image.blend(image.convert("RGB"), Image.fromarray(colormap(heat)), alpha)


def draw_grid(draw: ImageDraw.ImageDraw, values: np.ndarray, texts: list[list[str]], row_names: list[str], *,
              origin: tuple[int, int], cell: tuple[int, int], font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
              ) -> None:
    """A rows x columns grid of cells coloured by ``values`` (in [0, 1]) and labelled with ``texts``; the first
    row at the bottom (as layers stack), ``row_names`` to the left of ``origin``."""
    left, top = origin
    width, height = cell
    colours = colormap(values)
    rows, cols = values.shape
    for row in range(rows):
        y = top + (rows - 1 - row) * height
        draw.text((4, y + 6), row_names[row], fill="black", font=font)
        for col in range(cols):
            x = left + col * width
            colour = tuple(int(c) for c in colours[row, col])
            draw.rectangle((x, y, x + width - 1, y + height - 1), fill=colour)
            ink = "black" if float(np.mean(colour)) > 110 else "white"  # readable on dark and bright cells
            draw.text((x + 3, y + 6), texts[row][col], fill=ink, font=font)
