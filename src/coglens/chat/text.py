"""Text a person typed or passed that is not valid UTF-8.

Python hands invalid UTF-8 from ``argv`` (and from stdin read with ``errors="surrogateescape"``) over as lone
surrogates, which the tokenizer cannot encode; this says so in words before the model sees it. Kept light
(no torch): ``coglens ask`` checks its question before the model loads.
"""

from __future__ import annotations

_ESCAPED = range(0xDC80, 0xDD00)  # surrogateescape: byte b arrives as U+DC00 + b


class UndecodableTextError(ValueError):
    """Text with bytes that are not UTF-8 (lone surrogates)."""


def check_decoded(text: str, what: str) -> None:
    """Raise `UndecodableTextError` naming `what` and the first bad character if `text` is not valid UTF-8."""
    for position, char in enumerate(text):
        if 0xD800 <= ord(char) <= 0xDFFF:
            bad = f"the byte 0x{ord(char) - 0xDC00:02x}" if ord(char) in _ESCAPED else f"U+{ord(char):04X}"
            raise UndecodableTextError(
                f"{what} could not be decoded: it is not UTF-8 ({bad} at character {position}); set the terminal "
                "to UTF-8 (e.g. LANG=C.UTF-8) or retype it"
            )
