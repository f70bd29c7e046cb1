import numpy as np
import pytest
from PIL import Image

from coglens.grounding import draw_boxes, parse_boxes


def _grey(width=200, height=100):
    return Image.new("RGB", (width, height), (128, 128, 128))


def _outline_mask(shape, left, top, right, bottom, line):
    """Pixels of a rectangle outline drawn inwards from (left, top)-(right, bottom), both corners included."""
    ys, xs = np.indices(shape)
    inside = (xs >= left) & (xs <= right) & (ys >= top) & (ys <= bottom)
    core = (xs >= left + line) & (xs <= right - line) & (ys >= top + line) & (ys <= bottom - line)
    return inside & ~core


def test_draw_changes_exactly_the_outline_pixels():
    image = _grey()
    # (100, 200, 500, 800) on 200 x 100 -> pixels (20, 20)-(100, 80)
    drawn = draw_boxes(image, [(100, 200, 500, 800)], labels=False, line_width=3)
    assert drawn.size == image.size and drawn is not image
    changed = np.any(np.asarray(drawn) != np.asarray(image), axis=-1)
    assert np.array_equal(changed, _outline_mask(changed.shape, 20, 20, 100, 80, 3))
    assert drawn.getpixel((20, 20)) != (128, 128, 128)  # top-left corner
    assert drawn.getpixel((100, 50)) != (128, 128, 128)  # right edge
    assert drawn.getpixel((60, 50)) == (128, 128, 128)  # inside the box
    assert drawn.getpixel((150, 50)) == (128, 128, 128)  # outside the box
    assert np.array_equal(np.asarray(image), np.full((100, 200, 3), 128))  # the input is left alone


def test_each_box_gets_its_own_colour():
    result = parse_boxes("a cat[[050,100,300,900]] and a dog[[500,100,800,900;850,100,950,900]]")
    drawn = draw_boxes(_grey(), result, labels=False, line_width=2)
    colours = {drawn.getpixel((10, 10)), drawn.getpixel((100, 10)), drawn.getpixel((170, 10))}
    assert len(colours) == 3 and (128, 128, 128) not in colours


def test_labels_are_drawn_on_a_tab_above_the_box():
    image = _grey(400, 400)
    box = (250, 500, 750, 900)  # pixels (100, 200)-(300, 360)
    plain = np.asarray(draw_boxes(image, [box], labels=False))
    labelled = np.asarray(draw_boxes(image, parse_boxes(f"a dog{_bracket(box)}"), labels=True))
    label_only = np.any(labelled != plain, axis=-1)
    ys, xs = np.nonzero(label_only)
    assert ys.max() < 200 and ys.min() > 150  # a tab just above the top edge
    assert xs.min() == 100  # starting at the box's left edge
    tab = labelled[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].reshape(-1, 3)
    assert len({tuple(pixel) for pixel in tab}) > 2  # background plus text, not a plain block


def test_label_moves_inside_a_box_touching_the_top_edge():
    image = _grey(400, 400)
    plain = np.asarray(draw_boxes(image, [(250, 0, 750, 900)], labels=False))
    labelled = np.asarray(draw_boxes(image, [(250, 0, 750, 900)], labels=True))
    ys, xs = np.nonzero(np.any(labelled != plain, axis=-1))
    # the tab starts on the box's 2-pixel outline, which already has the tab's colour
    assert ys.min() <= 2 and ys.max() < 40 and 100 <= xs.min() <= 102


@pytest.mark.parametrize("mode", ["L", "P", "RGBA"])
def test_other_modes_are_drawn_in_colour_at_the_same_size(mode):
    image = Image.new(mode, (64, 48))
    drawn = draw_boxes(image, [(0, 0, 500, 500)])
    assert drawn.size == (64, 48)
    assert drawn.mode == ("RGBA" if mode == "RGBA" else "RGB")


def _bracket(box):
    return "[[" + ",".join(f"{value:03d}" for value in box) + "]]"
