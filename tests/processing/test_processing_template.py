"""The three prompt templates and history rendering, as THUDM's _history_to_prompt writes them."""

from __future__ import annotations

import pytest

from coglens.processing.errors import TemplateError
from coglens.processing.template import TEMPLATE_VERSIONS, render_prompt, render_turns, resolve_template

HISTORY = [("What is this?", "A cat."), ("What colour?", "Black.")]


def test_single_turn_templates():
    assert render_prompt("base", "Describe it.") == "Describe it."
    assert render_prompt("chat", "Describe it.") == "Question: Describe it. Answer:"
    assert render_prompt("vqa", "How many?") == "Question: How many? Short answer:"


def test_chat_history_comes_first_one_line_per_turn():
    assert render_prompt("chat", "Is it sleeping?", HISTORY) == (
        "Question: What is this? Answer: A cat.\n"
        "Question: What colour? Answer: Black.\n"
        "Question: Is it sleeping? Answer:"
    )


def test_vqa_history_uses_short_answer():
    assert render_prompt("vqa", "How many?", HISTORY[:1]) == (
        "Question: What is this? Short answer: A cat.\nQuestion: How many? Short answer:"
    )


def test_turns_split_where_the_prompt_would_be_joined():
    turns = render_turns("chat", "Is it sleeping?", HISTORY)
    assert turns == [
        "Question: What is this? Answer: A cat.\n",
        "Question: What colour? Answer: Black.\n",
        "Question: Is it sleeping? Answer:",
    ]


def test_base_ignores_history_like_the_original_and_says_so():
    with pytest.warns(UserWarning, match="'base' template ignores history"):
        assert render_prompt("base", "A photo of", HISTORY) == "A photo of"


def test_template_resolution_prefers_the_caller_then_the_checkpoint():
    assert resolve_template("vqa", "chat") == "vqa"
    assert resolve_template(None, "base") == "base"
    assert resolve_template(None, None) == "chat"


def test_unknown_template_lists_the_valid_ones():
    with pytest.raises(TemplateError, match="unknown template_version 'qa'; valid templates are base, chat, vqa"):
        render_prompt("qa", "hi")
    assert TEMPLATE_VERSIONS == ("base", "chat", "vqa")
