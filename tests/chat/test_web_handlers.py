"""The web demo's handlers without a browser: streaming into the chat, boxes, Stop, concurrency, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import gradio as gr
import pytest
from chat_helpers import GROUNDING_ANSWER, LOOPING_ANSWER
from PIL import Image

from coglens.chat.web import ChatHandlers
from coglens.engine import SamplingParams
from coglens.engine.scheduler import Scheduler
from coglens.pipeline import Pipeline

SETTINGS = ("chat", 0.0, 1.0, 0, 1000)  # template, temperature, top-p, top-k, max new tokens


@contextmanager
def handlers_for(model: str, *, max_batch_size: int = 8) -> Iterator[ChatHandlers]:
    pipe = Pipeline.load(model, max_batch_size=max_batch_size)
    scheduler = Scheduler(pipe.engine, max_queue=16, request_timeout_s=60)
    scheduler.start()
    try:
        yield ChatHandlers(pipe, scheduler)
    finally:
        scheduler.stop()


async def collect(updates, limit: int | None = None) -> list[tuple]:
    """The updates a handler yields, each with the chat as it was at that moment (the list is rebuilt)."""
    seen = []
    async for update in updates:
        seen.append(update)
        if limit is not None and len(seen) == limit:
            await updates.aclose()  # what Gradio does to the handler when Stop is clicked
            break
    return seen


def test_answer_streams_into_the_chat_and_ends_with_the_boxed_image(grounding_model, scene_image):
    with handlers_for(grounding_model) as handlers:
        session, messages, boxes = handlers.change_media(Image.open(scene_image), None)
        assert messages == [] and boxes is None
        updates = asyncio.run(collect(handlers.respond("Where are the animals?", [], session, *SETTINGS)))
    texts = [update[1][-1]["content"] for update in updates]
    assert texts[0] == "" and texts[-1] == GROUNDING_ANSWER
    assert len(set(texts)) > 3  # one update per token
    assert updates[-1][1][0] == {"role": "user", "content": "Where are the animals?"}
    boxed = updates[-1][3]
    assert isinstance(boxed, Image.Image) and boxed.size == (640, 480)
    assert [turn.finish_reason for turn in session.turns] == ["stop"]


def test_stop_aborts_the_request_and_keeps_the_partial_answer(looping_model):
    with handlers_for(looping_model) as handlers:
        session = handlers.session(None)
        asyncio.run(collect(handlers.respond("Count.", [], session, *SETTINGS), limit=30))
        (turn,) = session.turns
        follow_up = asyncio.run(collect(handlers.respond("Again.", [], session, "chat", 0.0, 1.0, 0, 5)))
        engine = handlers.scheduler.engine
    assert turn.finish_reason == "abort"
    assert turn.answer.startswith(LOOPING_ANSWER[:20]) and len(turn.answer) < len(LOOPING_ANSWER) * 100
    assert follow_up[-1][1][-1]["content"] == "one two three four five"  # the engine went on serving
    assert engine.stats.generated_tokens < 200  # the stopped answer did not run on to its 1000 tokens


def test_concurrent_chats_share_the_batch_and_get_their_own_answers(looping_model):
    limits = [12, 20, 28]  # max new tokens: answers of different lengths, decoded side by side
    with handlers_for(looping_model, max_batch_size=4) as handlers:
        sessions = [handlers.session(None) for _ in limits]

        async def chat_all() -> list[list[tuple]]:
            return await asyncio.gather(*(
                collect(handlers.respond("Count.", [], session, "chat", 0.0, 1.0, 0, limit))
                for session, limit in zip(sessions, limits, strict=True)))

        results = asyncio.run(chat_all())
        stats = handlers.scheduler.engine.stats
    for updates, limit in zip(results, limits, strict=True):  # the same as alone, without the scheduler
        expected = handlers.pipe.ask("Count.", params=SamplingParams(max_new_tokens=limit)).text
        assert updates[-1][1][-1]["content"] == expected
    assert stats.max_running >= 2


def test_a_new_image_starts_a_new_conversation_and_bad_input_is_a_gradio_error(grounding_model, scene_image):
    with handlers_for(grounding_model) as handlers:
        session, *_ = handlers.change_media(Image.open(scene_image), None)
        asyncio.run(collect(handlers.respond("Where?", [], session, *SETTINGS)))
        assert len(session.history) == 1
        session, messages, _ = handlers.change_media(Image.new("RGB", (32, 32)), session)
        assert session.history == [] and messages == []
        with pytest.raises(gr.Error, match="type a question"):
            asyncio.run(collect(handlers.respond("  ", [], session, *SETTINGS)))
        with pytest.raises(gr.Error, match="max_new_tokens"):
            asyncio.run(collect(handlers.respond("Where?", [], session, "chat", 0.0, 1.0, 0, 10**6)))
        assert session.history == []  # a refused question leaves no turn behind
