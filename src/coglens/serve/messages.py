"""Protocol-neutral chat messages, and how they become one CogVLM prompt (query + history + media).

Every protocol turns its request into a list of :class:`Message` (a completion-style prompt is one user
message) and :func:`to_conversation` applies the rules in one place:

- ``system`` messages (and OpenAI's ``developer``) are not a CogVLM concept: their text, in order, is put in
  front of the current query (joined by newlines), so a system prompt always reaches the model.
- consecutive messages of the same role are merged (texts joined by a newline, media kept in order);
- each ``assistant`` message closes a history turn ``(user text, answer)``; the conversation must end with a
  ``user`` message, which is the current query.
- media stay attached to the turn that sent them; :mod:`coglens.serve.service` decides the image layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from .errors import InvalidRequestError
from .wire import ContentPart, ImagePart, TextPart

Role = Literal["system", "user", "assistant"]
MediaKind = Literal["image", "video"]


@dataclass(frozen=True)
class MediaRef:
    """An image or video a request points at: a ``data:`` URL, a local path, or an http(s) URL."""

    kind: MediaKind
    url: str
    where: str  # the request field it came from, for error messages (``messages[0].content[1]``)


@dataclass(frozen=True)
class Message:
    role: Role
    text: str
    media: tuple[MediaRef, ...] = ()
    where: str = "prompt"


@dataclass(frozen=True)
class Turn:
    """One question of the conversation with the media sent with it; ``answer`` is None for the current one."""

    query: str
    answer: str | None
    media: tuple[MediaRef, ...] = ()
    where: str = "prompt"


@dataclass(frozen=True)
class Conversation:
    history: tuple[Turn, ...]
    current: Turn
    prompt_text: str = ""  # the text the client wrote, before any system prefix (what "echo" returns)
    turns: tuple[Turn, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "turns", (*self.history, self.current))

    @property
    def media(self) -> list[MediaRef]:
        return [ref for turn in self.turns for ref in turn.media]


def to_conversation(messages: list[Message]) -> Conversation:
    """Apply the rules of the module docstring; raises :class:`InvalidRequestError` for what cannot map."""
    if not messages:
        raise InvalidRequestError("messages is empty: send at least one user message", param="messages")
    system = [m.text for m in messages if m.role == "system" and m.text]
    if any(m.media for m in messages if m.role == "system"):
        where = next(m.where for m in messages if m.role == "system" and m.media)
        raise InvalidRequestError(f"{where}: system messages cannot carry images or videos; "
                                  "put them in a user message", param=where)
    merged = _merge_runs([m for m in messages if m.role != "system"])
    if not merged or merged[-1].role != "user":
        raise InvalidRequestError(
            "the conversation must end with a user message (the question to answer)", param="messages"
        )
    history: list[Turn] = []
    pending: Message | None = None
    for message in merged[:-1]:
        if message.role == "user":
            pending = message
            continue
        if message.media:
            raise InvalidRequestError(f"{message.where}: assistant messages cannot carry images or videos",
                                      param=message.where)
        query = pending.text if pending else ""  # an answer with no question before it (a greeting)
        history.append(Turn(query, message.text, pending.media if pending else (), _where(pending, message)))
        pending = None
    last = merged[-1]
    query = "\n".join([*system, last.text]) if system else last.text
    return Conversation(tuple(history), Turn(query, None, last.media, last.where), prompt_text=last.text)


def completion_prompt(prompt: str | Sequence[ContentPart], where: str) -> Conversation:
    """A completion-style prompt (TGI ``inputs``, vLLM ``prompt``, Triton ``text_input``): one user turn."""
    text, media = split_parts(prompt, where)
    return to_conversation([Message("user", text, media, where)])


def split_parts(content: str | Sequence[ContentPart] | None, where: str) -> tuple[str, tuple[MediaRef, ...]]:
    """The text (parts joined by newlines) and the media of a string or a list of typed parts."""
    if content is None or isinstance(content, str):
        return content or "", ()
    texts, media = [], []
    for i, part in enumerate(content):
        if isinstance(part, TextPart):
            texts.append(part.text)
            continue
        kind, value = ("image", part.image_url) if isinstance(part, ImagePart) else ("video", part.video_url)
        media.append(MediaRef(kind, value if isinstance(value, str) else value.url, f"{where}[{i}]"))
    return "\n".join(texts), tuple(media)


def _merge_runs(messages: list[Message]) -> list[Message]:
    merged: list[Message] = []
    for message in messages:
        if merged and merged[-1].role == message.role:
            previous = merged[-1]
            text = "\n".join(t for t in (previous.text, message.text) if t)
            merged[-1] = Message(message.role, text, previous.media + message.media, previous.where)
        else:
            merged.append(message)
    return merged


def _where(question: Message | None, answer: Message) -> str:
    return question.where if question is not None else answer.where
