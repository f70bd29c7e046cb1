"""The conversation rules shared by the terminal and the web chat: one image per conversation, or several."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from coglens.chat.session import ChatMediaError, ChatSession
from coglens.engine import SamplingParams
from coglens.pipeline import Pipeline

PARAMS = SamplingParams(max_new_tokens=4)


@pytest.fixture(scope="module")
def pipe(tiny_pipelines) -> Pipeline:
    return tiny_pipelines("cogvlm2", device=None)


@pytest.fixture(scope="module")
def images() -> tuple[Image.Image, Image.Image]:
    return Image.new("RGB", (60, 40), (200, 20, 20)), Image.new("RGB", (30, 50), (20, 20, 200))


def expected_ids(pipe: Pipeline, query: str, **options) -> torch.Tensor:
    return pipe.build_inputs(query, **options)["input_ids"]


def test_a_new_image_starts_a_new_conversation_by_default(pipe, images):
    red, blue = images
    session = ChatSession(pipe)
    session.set_media(session.load_image(red))
    session.record("q1", "a1", "stop")
    request = session.request("q2", PARAMS)
    assert torch.equal(request.input_ids, expected_ids(pipe, "q2", images=[red], history=[("q1", "a1")]))
    assert len(request.images) == 1

    assert session.set_media(session.load_image(blue)) is True
    assert session.history == []
    assert torch.equal(session.request("q3", PARAMS).input_ids, expected_ids(pipe, "q3", images=[blue]))
    assert [turn.conversation for turn in session.turns] == [1]


def test_multi_image_keeps_the_history_with_each_turns_image(pipe, images):
    red, blue = images
    session = ChatSession(pipe, multi_image=True)
    session.set_media(session.load_image(red))
    session.record("q1", "a1", "stop")
    session.record("q2", "a2", "stop")
    assert session.set_media(session.load_image(blue)) is False
    request = session.request("q3", PARAMS)
    history = [("q1", "a1", red), ("q2", "a2", None)]
    expected = expected_ids(pipe, "q3", images=[blue], history=history, allow_multiple_images=True)
    assert torch.equal(request.input_ids, expected)
    assert len(request.images) == 2

    session.record("q3", "a3", "stop")  # blue stays with turn 3; turn 4 brings no image
    request = session.request("q4", PARAMS)
    history.append(("q3", "a3", blue))
    assert torch.equal(request.input_ids,
                       expected_ids(pipe, "q4", history=history, allow_multiple_images=True))


def test_clear_forgets_the_history_but_keeps_the_image(pipe, images):
    red, _ = images
    session = ChatSession(pipe, multi_image=True)
    session.set_media(session.load_image(red))
    session.record("q1", "a1", "stop")
    session.clear()
    assert session.history == []
    assert torch.equal(session.request("q2", PARAMS).input_ids, expected_ids(pipe, "q2", images=[red]))


def test_grounding_answers_are_parsed_when_recorded(pipe):
    turn = ChatSession(pipe).record("where?", "a dog[[100,200,300,400]] and[[1,2]]", "stop")
    assert [(box.phrase, box.box_rel) for box in turn.grounding.boxes] == [("a dog", (100, 200, 300, 400))]
    assert len(turn.grounding.errors) == 1


def test_media_that_does_not_fit_the_model_is_refused(pipe, tmp_path, tiny_pipelines):
    session = ChatSession(pipe)
    with pytest.raises(ChatMediaError, match="image model"):
        session.load_video(tmp_path / "clip.mp4")
    with pytest.raises(ChatMediaError, match="no history"):
        ChatSession(pipe, template="base", multi_image=True)
    video_session = ChatSession(tiny_pipelines("cogvlm2-video", device=None))
    with pytest.raises(ChatMediaError, match="video model"):
        video_session.load_image(Image.new("RGB", (8, 8)))
