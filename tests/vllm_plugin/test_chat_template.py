"""The plugin's chat template renders OpenAI messages exactly as CogLens's templates do, and refuses what
CogVLM's format has no place for. Rendered by transformers (as vLLM renders it); no vLLM needed."""

from __future__ import annotations

import pytest
from jinja2.exceptions import TemplateError

from coglens.processing.template import render_prompt
from coglens.processing.tokenizer import load_tokenizer
from coglens.tiny import tiny_model_path
from coglens.vllm_plugin import chat_template_path

HISTORY = [("Describe the colours.", "Red and blue.")]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(tiny_model_path("cogvlm2"), variant="cogvlm2")


def render(tokenizer, messages: list[dict], **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, chat_template=chat_template_path().read_text(), tokenize=False,
                                         **kwargs)


def conversation(query: str) -> list[dict]:
    past = [m for q, a in HISTORY for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    image = {"type": "image_url", "image_url": {"url": "data:,"}}
    return [{"role": "system", "content": "You are helpful."}, *past,
            {"role": "user", "content": [image, {"type": "text", "text": query}]}]


@pytest.mark.parametrize("template", ["chat", "vqa", "base"])
def test_messages_render_as_coglens_prompts(tokenizer, template: str) -> None:
    kwargs = {} if template == "chat" else {"template_version": template}
    expected = render_prompt(template, "What is it?", None if template == "base" else HISTORY)  # base: no history
    assert render(tokenizer, conversation("What is it?"), **kwargs) == tokenizer.bos_token + expected


def test_unknown_templates_and_roles_are_refused(tokenizer) -> None:
    with pytest.raises(TemplateError, match="unknown template_version chats"):
        render(tokenizer, conversation("Hi"), template_version="chats")
    with pytest.raises(TemplateError, match="user and assistant turns only, got role tool"):
        render(tokenizer, [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "42"}])

