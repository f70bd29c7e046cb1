import pytest
from hypothesis import given
from hypothesis import strategies as st

from coglens.grounding import InvalidBoxError, format_box, format_boxes, from_pixels, parse_boxes, to_pixels


@st.composite
def boxes_rel(draw):
    x0, x1 = sorted(draw(st.integers(0, 999)) for _ in range(2))
    y0, y1 = sorted(draw(st.integers(0, 999)) for _ in range(2))
    return (x0, y0, x1, y1)


def test_format_box_zero_pads():
    assert format_box((86, 540, 400, 760)) == "[[086,540,400,760]]"
    assert format_box([0, 0, 999, 999]) == "[[000,000,999,999]]"
    assert format_boxes([(86, 540, 400, 760), (1, 2, 3, 4)]) == "[[086,540,400,760;001,002,003,004]]"


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ((1, 2, 3), "needs 4 coordinates"),
        ((0, 0, 1000, 10), "outside 0-999"),
        ((-1, 0, 10, 10), "outside 0-999"),
        ((0.5, 0, 10, 10), "must be ints"),
        ((10, 0, 5, 10), "x0 <= x1"),
        ((0, 10, 5, 5), "y0 <= y1"),
    ],
)
def test_format_box_rejects_invalid_boxes(box, message):
    with pytest.raises(InvalidBoxError, match=message):
        format_box(box)


def test_format_boxes_rejects_empty_list():
    with pytest.raises(InvalidBoxError, match="at least one box"):
        format_boxes([])


@given(st.lists(boxes_rel(), min_size=1, max_size=5))
def test_format_then_parse_is_identity(boxes):
    result = parse_boxes(f"some objects{format_boxes(boxes)} and one more{format_box(boxes[0])}.")
    assert [box.box_rel for box in result.boxes] == [*boxes, boxes[0]]
    assert result.errors == []
    assert result.clean_text == "some objects and one more."


def test_to_pixels_by_hand():
    # 640 x 480 image: x = rel / 1000 * 640, y = rel / 1000 * 480
    assert to_pixels((86, 540, 400, 760), 640, 480) == (55.04, 259.2, 256.0, 364.8)
    assert to_pixels((0, 0, 999, 999), 1000, 2000) == pytest.approx((0.0, 0.0, 999.0, 1998.0))


def test_from_pixels_by_hand_rounds_and_clamps():
    assert from_pixels((55, 259, 256, 365), 640, 480) == (86, 540, 400, 760)  # 85.9 -> 86, 760.4 -> 760
    assert from_pixels((-20, -1, 640, 480), 640, 480) == (0, 0, 999, 999)  # clamped to the image
    assert from_pixels((10.4, 0, 10.6, 1), 1000, 1000) == (10, 0, 11, 1)


@given(boxes_rel(), st.integers(1, 5000), st.integers(1, 5000))
def test_from_pixels_inverts_to_pixels(box, width, height):
    assert from_pixels(to_pixels(box, width, height), width, height) == box


@pytest.mark.parametrize(
    ("box", "width", "height", "message"),
    [
        ((0, 0, 10, 10), 0, 10, "width must be a positive int"),
        ((0, 0, 10, 10), 10, -5, "height must be a positive int"),
        ((0, 0, float("nan"), 10), 10, 10, "finite numbers"),
        ((20, 0, 10, 10), 100, 100, "x0 <= x1"),
        ((0, 0, 10), 100, 100, "needs 4 coordinates"),
    ],
)
def test_from_pixels_rejects_invalid_input(box, width, height, message):
    with pytest.raises(InvalidBoxError, match=message):
        from_pixels(box, width, height)
