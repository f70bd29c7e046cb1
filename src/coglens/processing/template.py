"""CogVLM's three prompt templates, shared by CogVLM-1, CogVLM2 and CogVLM2-Video.

- ``base``: the query as is. History is ignored, exactly as in THUDM's ``_history_to_prompt`` (the base and
  grounding checkpoints were trained on single-turn prompts); a warning says so when history is given.
- ``chat``: ``Question: {q} Answer:``; earlier turns come first, each as ``Question: {q} Answer: {a}\\n``.
- ``vqa``: the same with ``Short answer:``.

Light to import (no torch): the ``coglens`` command builds its ``--template`` choices from here.
"""

from __future__ import annotations

import warnings
from typing import Literal, get_args

from coglens.processing.errors import TemplateError

TemplateVersion = Literal["base", "chat", "vqa"]
TEMPLATE_VERSIONS: tuple[str, ...] = get_args(TemplateVersion)
_ANSWER_CUE = {"chat": "Answer:", "vqa": "Short answer:"}


def resolve_template(template_version: str | None, default: str | None) -> str:
    """The template to use: the caller's choice, else the checkpoint's ``template_version``, else ``chat``."""
    name = template_version or default or "chat"
    if name not in TEMPLATE_VERSIONS:
        raise TemplateError(
            f"unknown template_version {name!r}; valid templates are {', '.join(TEMPLATE_VERSIONS)}"
        )
    return name


def render_turn(template_version: str, query: str, answer: str | None = None) -> str:
    """One turn: an earlier one (with its ``answer`` and the trailing newline) or the open, current one."""
    template_version = resolve_template(template_version, None)
    if template_version == "base":
        return query
    question = f"Question: {query} {_ANSWER_CUE[template_version]}"
    return question if answer is None else f"{question} {answer}\n"


def render_prompt(template_version: str, query: str, history: list[tuple[str, str]] | None = None) -> str:
    """The whole prompt text for ``query`` after the (query, answer) turns of ``history``."""
    return "".join(render_turns(template_version, query, history))


def render_turns(
    template_version: str, query: str, history: list[tuple[str, str]] | None = None
) -> list[str]:
    """The prompt split into turns (history first, the current query last); ``base`` gives only the query."""
    template_version = resolve_template(template_version, None)
    if template_version == "base":
        if history:
            warnings.warn(
                "the 'base' template ignores history (as the original CogVLM code does); use 'chat' or 'vqa' "
                "for multi-turn prompts",
                stacklevel=2,
            )
        return [query]
    past = [render_turn(template_version, old_query, answer) for old_query, answer in history or []]
    return [*past, render_turn(template_version, query)]
