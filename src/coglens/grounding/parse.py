"""Find CogVLM grounding boxes in generated text.

The model writes ``[[x0,y0,x1,y1]]`` right after the words it grounds, several boxes for one
phrase in one bracket separated by ``;``: "A man[[086,540,400,760]] holding two dogs[[100,200,300,400;
500,200,700,400]]". ``parse_boxes`` returns every well-formed box with its phrase (see
``coglens.grounding.phrases`` for the rule) and reports every malformed one in ``errors``: a box
the model got wrong is never repaired or guessed.

What counts as malformed: an item without exactly four numbers, a number that is not three digits
(``86``, ``0086``) or above 999, x1 < x0 or y1 < y0, an empty item (``[[]]``, a stray ``;``), and
a ``[[`` with no ``]]`` before the next ``[[`` or the end of the text (e.g. a truncated answer).
Whitespace around numbers and separators is tolerated. Every closed ``[[...]]`` is markup and is
removed from ``clean_text``, whether or not its boxes were valid; an unclosed one stays verbatim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from coglens.grounding.boxes import REL_MAX, BoxPx, BoxRel, to_pixels
from coglens.grounding.phrases import phrase_before

Span = tuple[int, int]

_OPEN, _CLOSE = "[[", "]]"
_UNCLOSED_RUN = re.compile(r"\[\[(?:\s*[0-9,;])*")  # what an unclosed bracket swallowed, for the report
_NUMBER = re.compile(r"[0-9]+")
_CLOSING_PUNCTUATION = ".,;:!?)"


@dataclass(frozen=True)
class GroundedBox:
    """One box of an answer. ``text[span[0]:span[1]]`` is its four numbers, e.g. ``"086,540,400,760"``."""

    phrase: str
    box_rel: BoxRel
    span: Span
    bracket_span: Span  # the whole ``[[...]]`` it sits in, shared by the boxes of one bracket
    phrase_span: Span  # where ``phrase`` is in the text; empty (start == end) when there is none

    def to_pixels(self, width: int, height: int) -> BoxPx:
        return to_pixels(self.box_rel, width, height)


@dataclass(frozen=True)
class BoxError:
    """A malformed box: where it is (``text[span[0]:span[1]] == fragment``) and what is wrong with it."""

    span: Span
    fragment: str
    reason: str

    @property
    def position(self) -> int:
        return self.span[0]

    def __str__(self) -> str:
        return f"characters {self.span[0]}-{self.span[1]} {self.fragment!r}: {self.reason}"


class MalformedBoxesError(ValueError):
    """Raised by ``GroundingResult.raise_for_errors`` when an answer holds malformed boxes."""


@dataclass
class GroundingResult:
    text: str
    clean_text: str  # the answer with every closed ``[[...]]`` removed
    boxes: list[GroundedBox] = field(default_factory=list)
    errors: list[BoxError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> None:
        if self.errors:
            details = "; ".join(str(error) for error in self.errors)
            raise MalformedBoxesError(
                f"{len(self.errors)} malformed box(es) in the answer: {details}. "
                "Boxes are written [[x0,y0,x1,y1]] with three-digit coordinates 000-999."
            )


def parse_boxes(text: str) -> GroundingResult:
    """Every box in ``text``, tied to the phrase before it, plus the text without boxes."""
    boxes: list[GroundedBox] = []
    errors: list[BoxError] = []
    closed_brackets: list[Span] = []
    segment_start = 0  # phrases never reach back across a previous bracket
    open_at = text.find(_OPEN)
    while open_at != -1:
        close_at = text.find(_CLOSE, open_at + len(_OPEN))
        next_open = text.find(_OPEN, open_at + len(_OPEN))
        if close_at == -1 or (next_open != -1 and next_open < close_at):
            run_end = _UNCLOSED_RUN.match(text, open_at).end()
            errors.append(
                BoxError((open_at, run_end), text[open_at:run_end], "unclosed bracket: '[[' without ']]'")
            )
            segment_start = run_end
            open_at = next_open
            continue
        bracket = (open_at, close_at + len(_CLOSE))
        phrase_span = phrase_before(text, segment_start, open_at)
        phrase = text[phrase_span[0] : phrase_span[1]]
        for item_span, reasons, box in _parse_items(text, open_at + len(_OPEN), close_at):
            if box is None:
                # an empty item has no text of its own: point at its bracket instead
                where = item_span if item_span[0] < item_span[1] else bracket
                errors.append(BoxError(where, text[where[0] : where[1]], "; ".join(reasons)))
            else:
                boxes.append(GroundedBox(phrase, box, item_span, bracket, phrase_span))
        closed_brackets.append(bracket)
        segment_start = bracket[1]
        open_at = text.find(_OPEN, bracket[1])
    errors.sort(key=lambda error: error.span)
    return GroundingResult(text, _remove_spans(text, closed_brackets), boxes, errors)


def _parse_items(text: str, start: int, end: int) -> list[tuple[Span, list[str], BoxRel | None]]:
    """Each ``;``-separated item of a bracket body: its span, and either its box or what is wrong."""
    items = []
    item_start = start
    for item_end in [*(i for i in range(start, end) if text[i] == ";"), end]:
        span = _strip_span(text, item_start, item_end)
        items.append((span, *_parse_item(text[span[0] : span[1]])))
        item_start = item_end + 1
    return items


def _parse_item(item: str) -> tuple[list[str], BoxRel | None]:
    if not item:
        return ["empty box: '[[]]' or a stray ';'"], None
    parts = [part.strip() for part in item.split(",")]
    if len(parts) != 4:
        return [f"box has {len(parts)} number(s), expected 4 (x0,y0,x1,y1)"], None
    reasons = []
    for name, part in zip(("x0", "y0", "x1", "y1"), parts, strict=True):
        if not _NUMBER.fullmatch(part):
            reasons.append(f"{name} {part!r} is not a number")
        elif int(part) > REL_MAX:
            reasons.append(f"{name} {part} is above {REL_MAX}")
        elif len(part) != 3:
            reasons.append(f"{name} {part!r} is not 3 digits")
    if all(_NUMBER.fullmatch(part) for part in parts):
        x0, y0, x1, y1 = (int(part) for part in parts)
        if x1 < x0:
            reasons.append(f"x1 {parts[2]} is left of x0 {parts[0]}")
        if y1 < y0:
            reasons.append(f"y1 {parts[3]} is above y0 {parts[1]}")
        if not reasons:
            return [], (x0, y0, x1, y1)
    return reasons, None


def _strip_span(text: str, start: int, end: int) -> Span:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _remove_spans(text: str, spans: list[Span]) -> str:
    """Cut the spans out and mend the spacing, so "a dog [[...]] ." reads "a dog."."""
    pieces = []
    previous_end = 0
    for start, end in spans:
        pieces.append(text[previous_end:start])
        previous_end = end
    pieces.append(text[previous_end:])
    joined = pieces[0]
    for piece in pieces[1:]:
        joined = _join(joined, piece)
    return joined


def _join(left: str, right: str) -> str:
    if not left or left.endswith("\n"):
        return left + right.lstrip(" \t")
    if left[-1] in " \t" and (not right or right[0].isspace() or right[0] in _CLOSING_PUNCTUATION):
        return left.rstrip(" \t") + right
    if right and _is_ascii_alnum(left[-1]) and _is_ascii_alnum(right[0]):
        return f"{left} {right}"  # "a dog[[...]]and" -> "a dog and"; CJK text needs no space
    return left + right


def _is_ascii_alnum(char: str) -> bool:
    return char.isascii() and char.isalnum()
