import pytest

from coglens.grounding import GroundedBox, MalformedBoxesError, parse_boxes


def test_single_box_with_phrase_and_spans():
    text = "A man[[086,540,400,760]] holding a dog."
    result = parse_boxes(text)
    assert result.boxes == [GroundedBox("A man", (86, 540, 400, 760), (7, 22), (5, 24), (0, 5))]
    assert text[7:22] == "086,540,400,760"
    assert result.clean_text == "A man holding a dog."
    assert result.errors == [] and result.ok


def test_several_boxes_in_one_bracket_share_phrase_and_bracket():
    text = "two dogs[[100,200,300,400;500,200,700,410]] sleep"
    result = parse_boxes(text)
    assert [box.box_rel for box in result.boxes] == [(100, 200, 300, 400), (500, 200, 700, 410)]
    assert [text[slice(*box.span)] for box in result.boxes] == ["100,200,300,400", "500,200,700,410"]
    assert {box.bracket_span for box in result.boxes} == {(8, 43)}
    assert {box.phrase for box in result.boxes} == {"two dogs"}
    assert result.clean_text == "two dogs sleep"


def test_several_brackets_each_get_the_noun_phrase_before_them():
    text = (
        "The image shows a group of people[[010,020,500,900]] standing on the beach[[000,700,999,999]], "
        "and a red kite[[400,050,520,150]] above them. A dog[[600,600,700,800]]."
    )
    result = parse_boxes(text)
    assert [box.phrase for box in result.boxes] == ["a group of people", "the beach", "a red kite", "A dog"]
    assert [text[slice(*box.phrase_span)] for box in result.boxes] == [box.phrase for box in result.boxes]
    assert result.clean_text == (
        "The image shows a group of people standing on the beach, and a red kite above them. A dog."
    )


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("Cats[[100,100,200,200]]", "Cats"),
        ("is holding his hat[[100,100,200,200]]", "his hat"),
        ("the man's hat[[100,100,200,200]]", "the man's hat"),
        ("a large, brown dog[[100,100,200,200]]", "brown dog"),  # a comma ends the segment
        ("it is located at[[100,100,200,200]]", ""),  # only a stop word before the bracket
        ("一只猫[[100,100,200,200]]", "一只猫"),  # no English words: the whole segment
    ],
)
def test_phrase_rule(text, phrase):
    assert parse_boxes(text).boxes[0].phrase == phrase


def test_box_without_text_has_empty_phrase():
    result = parse_boxes("[[302,180,615,745]]")
    assert result.boxes[0].phrase == "" and result.boxes[0].phrase_span == (0, 0)
    assert result.clean_text == ""


def test_text_without_boxes_is_unchanged():
    result = parse_boxes("A plain answer [with] one bracket.")
    assert result.boxes == [] and result.errors == []
    assert result.clean_text == "A plain answer [with] one bracket."


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("a dog [[100,100,200,200]] runs", "a dog runs"),
        ("a dog [[100,100,200,200]].", "a dog."),
        ("a dog[[100,100,200,200]]runs", "a dog runs"),
        ("[[100,100,200,200]] A dog", "A dog"),
        ("line\n[[100,100,200,200]] next", "line\nnext"),
        ("猫[[100,100,200,200]]在", "猫在"),
    ],
)
def test_clean_text_mends_spacing(text, clean):
    assert parse_boxes(text).clean_text == clean


def test_whitespace_inside_bracket_is_tolerated():
    result = parse_boxes("a cat[[ 086, 540 ,400,760 ; 100,200,300,400 ]]")
    assert [box.box_rel for box in result.boxes] == [(86, 540, 400, 760), (100, 200, 300, 400)]
    assert result.errors == []


@pytest.mark.parametrize(
    ("text", "span", "reason"),
    [
        ("a cat[[086,540,400]]", (7, 18), "box has 3 number(s), expected 4"),
        ("a cat[[086,540,400,760,100]]", (7, 26), "box has 5 number(s), expected 4"),
        ("a cat[[086,540,400,1000]]", (7, 23), "y1 1000 is above 999"),
        ("a cat[[86,540,400,760]]", (7, 21), "x0 '86' is not 3 digits"),
        ("a cat[[0086,540,400,760]]", (7, 23), "x0 '0086' is not 3 digits"),
        ("a cat[[0x1,540,400,760]]", (7, 22), "x0 '0x1' is not a number"),
        ("a cat[[400,540,300,760]]", (7, 22), "x1 300 is left of x0 400"),
        ("a cat[[100,540,300,500]]", (7, 22), "y1 500 is above y0 540"),
        ("a cat[[]]", (5, 9), "empty box"),
        ("a cat[[100,200", (5, 14), "unclosed bracket"),
    ],
)
def test_malformed_boxes_are_reported_not_guessed(text, span, reason):
    result = parse_boxes(text)
    assert result.boxes == []
    assert len(result.errors) == 1
    error = result.errors[0]
    assert error.span == span and error.position == span[0]
    assert error.fragment == text[span[0] : span[1]]
    assert reason in error.reason


def test_bad_item_does_not_hide_the_good_ones_of_its_bracket():
    text = "dogs[[100,200,300,400;500,200,400,410;]] and a cat[[600,600,700,700]]"
    result = parse_boxes(text)
    assert [box.box_rel for box in result.boxes] == [(100, 200, 300, 400), (600, 600, 700, 700)]
    assert [(error.fragment, error.reason) for error in result.errors] == [
        ("[[100,200,300,400;500,200,400,410;]]", "empty box: '[[]]' or a stray ';'"),  # errors sort by start
        ("500,200,400,410", "x1 400 is left of x0 500"),
    ]
    assert result.clean_text == "dogs and a cat"


def test_unclosed_bracket_stays_in_text_and_next_bracket_still_parses():
    text = "a cat[[100,200 and a dog[[300,300,400,400]]"
    result = parse_boxes(text)
    assert [(box.phrase, box.box_rel) for box in result.boxes] == [("a dog", (300, 300, 400, 400))]
    assert [error.fragment for error in result.errors] == ["[[100,200"]
    assert result.clean_text == "a cat[[100,200 and a dog"


def test_raise_for_errors_names_the_problem():
    with pytest.raises(MalformedBoxesError, match=r"characters 7-18 '086,540,400': box has 3"):
        parse_boxes("a cat[[086,540,400]]").raise_for_errors()
    parse_boxes("a cat[[086,540,400,760]]").raise_for_errors()  # no error: nothing raised
