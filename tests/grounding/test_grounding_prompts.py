import pytest

from coglens.grounding import (
    InvalidBoxError,
    InvalidPromptInputError,
    caption_with_boxes_prompt,
    referring_expression_prompt,
    region_description_prompt,
)


def test_caption_with_boxes_prompt():
    assert caption_with_boxes_prompt() == (
        "Can you provide a description of the image and include the coordinates [[x0,y0,x1,y1]] "
        "for each mentioned object?"
    )


def test_referring_expression_prompt():
    assert referring_expression_prompt(" the dog on the left ") == (
        "Can you point out the dog on the left in the image and provide the bounding boxes of their location?"
    )
    with pytest.raises(InvalidPromptInputError, match="non-empty expression"):
        referring_expression_prompt("  ")


def test_region_description_prompt_with_relative_box():
    assert region_description_prompt((86, 540, 400, 760)) == (
        "Tell me what you see within the designated area [[086,540,400,760]] in the picture."
    )


def test_region_description_prompt_with_pixel_box():
    # 640 x 480: 55/640 -> 085.9 -> 086, 259/480 -> 539.6 -> 540, 256/640 -> 400, 365/480 -> 760.4 -> 760
    assert region_description_prompt((55, 259, 256, 365), width=640, height=480) == (
        "Tell me what you see within the designated area [[086,540,400,760]] in the picture."
    )


def test_region_description_prompt_rejects_half_a_size_and_pixel_boxes_without_size():
    with pytest.raises(InvalidPromptInputError, match="both width and height"):
        region_description_prompt((10, 10, 20, 20), width=640)
    with pytest.raises(InvalidBoxError, match="from_pixels"):
        region_description_prompt((10, 10, 1200, 20))
