"""How chat messages map onto a CogVLM conversation (system text, merged runs, history turns)."""

from __future__ import annotations

import pytest

from coglens.serve.errors import InvalidRequestError
from coglens.serve.messages import MediaRef, Message, split_parts, to_conversation
from coglens.serve.wire import ImagePart, MediaURL, TextPart, VideoPart

IMG = MediaRef("image", "data:image/png;base64,AA==", "messages[0].content[1]")


def test_system_text_goes_before_the_current_query_and_history_pairs_up():
    conversation = to_conversation([
        Message("system", "Be brief."), Message("user", "Q1", (IMG,)), Message("assistant", "A1"),
        Message("system", "Use English."), Message("user", "Q2"),
    ])
    assert [(t.query, t.answer, t.media) for t in conversation.history] == [("Q1", "A1", (IMG,))]
    assert conversation.current.query == "Be brief.\nUse English.\nQ2"
    assert conversation.prompt_text == "Q2"
    assert conversation.media == [IMG]


def test_consecutive_messages_of_one_role_merge():
    conversation = to_conversation([Message("user", "a"), Message("user", "b", (IMG,)), Message("assistant", "x"),
                                    Message("assistant", "y"), Message("user", "c")])
    assert conversation.history[0].query == "a\nb" and conversation.history[0].answer == "x\ny"
    assert conversation.history[0].media == (IMG,)


def test_a_leading_answer_gets_an_empty_question():
    conversation = to_conversation([Message("assistant", "Hello!"), Message("user", "Hi")])
    assert (conversation.history[0].query, conversation.history[0].answer) == ("", "Hello!")


@pytest.mark.parametrize(("messages", "words"), [
    ([], "empty"),
    ([Message("system", "only a system prompt")], "end with a user"),
    ([Message("user", "q"), Message("assistant", "a")], "end with a user"),
    ([Message("system", "s", (IMG,), "messages[0]"), Message("user", "q")], "system messages cannot"),
    ([Message("user", "q"), Message("assistant", "a", (IMG,), "messages[1]"), Message("user", "q")],
     "assistant messages cannot"),
])
def test_conversations_that_cannot_map(messages, words):
    with pytest.raises(InvalidRequestError, match=words):
        to_conversation(messages)


def test_split_parts_accepts_plain_and_object_urls():
    parts = [TextPart(type="text", text="one"), ImagePart(type="image_url", image_url="a.png"),
             VideoPart(type="video_url", video_url=MediaURL(url="b.mp4")), TextPart(type="text", text="two")]
    text, media = split_parts(parts, "inputs")
    assert text == "one\ntwo"
    assert media == (MediaRef("image", "a.png", "inputs[1]"), MediaRef("video", "b.mp4", "inputs[2]"))
    assert split_parts("plain", "inputs") == ("plain", ())
