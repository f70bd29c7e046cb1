"""Which words of an answer a box belongs to: the noun phrase right before its bracket.

No parser is involved (CogVLM's own demo pulls in spaCy for this); a closed list of English
function words is enough for the grounding model's captions, which read like
"A man[[...]] in a red shirt[[...]] is holding a frisbee[[...]]".

Rule, applied to the text between the previous boundary and the bracket:

1. Boundaries are the start of the answer, the end of the previous ``[[...]]``, a line break,
   and the punctuation ``. ! ? , ; : ( ) "`` (so "The dog. A cat[[...]]" gives "A cat").
2. Walk the words of that segment backwards. Stop *before* a verb, preposition, conjunction or
   relative pronoun from the lists below, and stop *after* a determiner, possessive or number
   word: "The image shows a group of people" -> "a group of people", "standing on the beach"
   -> "the beach", "and two dogs" -> "two dogs".
3. If nothing is left (the bracket follows punctuation or a stop word), the phrase is empty.

Non-English text has no listed words, so its phrase is the whole segment.
"""

from __future__ import annotations

import re


def _word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


_DETERMINERS = _word_set(
    "a an the this that these those my your his her its our their some any each every another "
    "both all several many few one two three four five six seven eight nine ten"
)
_STOP_WORDS = _word_set(
    # prepositions ("of" is left out on purpose: it sits inside noun phrases, "a cup of tea")
    "on in at with by near under above below behind beside besides between among around for to "
    "from into onto over across along against inside outside beneath toward towards through upon "
    # conjunctions and relative pronouns
    "and or but nor while whereas as where which who whom whose than then also "
    # verbs the captions use between objects
    "is are was were be been being am has have had do does did can could there here "
    "show shows showing shown depict depicts depicting contain contains containing feature features "
    "featuring include includes including hold holds holding wear wears wearing sit sits sitting "
    "stand stands standing lie lies lying play plays playing look looks looking walk walks walking "
    "ride rides riding use uses using eat eats eating carry carries carrying see seen appear appears "
    "seem seems located placed"
)
_SEGMENT_BOUNDARY = re.compile(r'[.!?,;:()"\n]')
_WORD = re.compile(r"\S+")
_EDGE_PUNCTUATION = "'`*-"


def phrase_before(text: str, start: int, end: int) -> tuple[int, int]:
    """Span (in ``text``) of the noun phrase that ends the segment ``text[start:end]``; empty if none."""
    boundaries = list(_SEGMENT_BOUNDARY.finditer(text, start, end))
    segment_start = boundaries[-1].end() if boundaries else start
    words = list(_WORD.finditer(text, segment_start, end))
    phrase_start = phrase_end = end
    for index, word in enumerate(reversed(words)):
        key = word.group().strip(_EDGE_PUNCTUATION).lower()
        if key in _STOP_WORDS:
            break
        if index == 0:
            phrase_end = word.end()
        phrase_start = word.start()
        if key in _DETERMINERS:
            break
    return phrase_start, phrase_end
