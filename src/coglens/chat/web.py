"""``coglens web``: a Gradio chat demo, after THUDM's ``web_demo.py``.

Image (or, for CogVLM2-Video, video) upload, streamed answers, template choice, sampling sliders, a clear
button, and the image with the boxes of a grounding answer drawn. Every browser tab has its own
:class:`ChatSession`; all of them share one engine through its :class:`~coglens.engine.Scheduler` (one thread
steps the engine, each handler awaits its own request's events), so the answers of concurrent users are decoded
in the same batch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import gradio as gr
from PIL import Image

from ..engine import EngineError, SamplingParams, Scheduler
from ..processing.template import TEMPLATE_VERSIONS
from .boxes import boxed_picture
from .session import ChatSession

MAX_QUEUE = 64  # questions waiting for a place in the batch before new ones are refused
REQUEST_TIMEOUT_S = 3600.0
Messages = list[dict[str, str]]


class ChatHandlers:
    """What the widgets call; kept apart from the layout so the flow reads (and tests) on its own."""

    def __init__(self, pipe: Any, scheduler: Scheduler) -> None:
        self.pipe = pipe
        self.scheduler = scheduler

    def session(self, state: ChatSession | None) -> ChatSession:
        return state if state is not None else ChatSession(self.pipe)

    def change_media(self, media: Image.Image | str | None, state: ChatSession | None):
        """A new image or video starts a new conversation (the released models take one per conversation)."""
        session = self.session(state)
        try:
            if media is None:
                loaded = None
            elif session.pipe.config.is_video:
                loaded = session.load_video(media)
            else:
                loaded = session.load_image(media)
        except (ValueError, OSError) as exc:
            raise gr.Error(str(exc)) from exc
        session.set_media(loaded)
        return session, [], None

    def clear(self, state: ChatSession | None):
        session = self.session(state)
        session.clear()
        return session, [], None

    async def respond(
        self, question: str, messages: Messages | None, state: ChatSession | None, template: str,
        temperature: float, top_p: float, top_k: float, max_new_tokens: float,
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Stream the answer into the chat; at the end show the image with the answer's boxes, if any."""
        session = self.session(state)
        question = question.strip()
        if not question:
            raise gr.Error("type a question first")
        session.template = template
        try:
            params = SamplingParams.from_temperature(float(temperature), max_new_tokens=int(max_new_tokens),
                                                     top_p=float(top_p), top_k=int(top_k))
            group = self.scheduler.submit([session.request(question, params)], protocol="web")
        except (ValueError, OSError, EngineError) as exc:  # bad settings, a full queue...
            raise gr.Error(str(exc)) from exc
        shown = [*(messages or []), {"role": "user", "content": question}]
        yield session, [*shown, {"role": "assistant", "content": ""}], "", gr.skip()
        answer, finish_reason, error = "", None, None
        try:
            async for _, event in group.events():
                answer += event.text
                finish_reason = event.finish_reason
                yield session, [*shown, {"role": "assistant", "content": answer}], "", gr.skip()
        except (EngineError, ValueError) as exc:  # refused by the engine (prompt + max new tokens too long...)
            error = exc
        finally:
            if finish_reason is None:
                group.cancel()
                if error is None:  # Stop (or a closed tab) ended this handler: keep the partial answer
                    session.record(question, answer, "abort")
        if error is not None:
            yield session, messages or [], question, gr.skip()  # the question back in the box, to edit
            raise gr.Error(str(error))
        turn = session.record(question, answer, finish_reason)
        picture = session.media.picture if session.media is not None else None
        boxed = boxed_picture(picture, turn.grounding)
        yield session, [*shown, {"role": "assistant", "content": answer}], "", boxed


def _headless_matplotlib() -> None:
    """Gradio switches matplotlib's backend to agg and back around every event it processes; left on "auto" (no
    backend chosen), matplotlib re-resolves it each time (half a second), and a streamed answer crawls. The demo
    draws nothing interactive: settle on agg once, when matplotlib is installed and nothing chose a backend."""
    os.environ.setdefault("MPLBACKEND", "agg")
    matplotlib = sys.modules.get("matplotlib")
    auto = getattr(getattr(matplotlib, "rcsetup", None), "_auto_backend_sentinel", None)
    if matplotlib is not None and auto is not None and matplotlib.rcParams._get("backend") is auto:
        matplotlib.use("agg")


def build_demo(pipe: Any, scheduler: Scheduler, *, concurrency: int | None = None) -> gr.Blocks:
    """The Gradio app; ``concurrency`` answers run at once (default: the engine's batch size).

    ``scheduler`` must be started (and stopped after) by the caller, as :func:`launch` does.
    """
    _headless_matplotlib()
    handlers = ChatHandlers(pipe, scheduler)
    config = pipe.config
    is_video = config.is_video
    media_kind = "video" if is_video else "image"
    concurrency = concurrency or pipe.engine.max_batch_size
    with gr.Blocks(title="CogLens chat") as demo:
        state = gr.State(None)
        gr.Markdown(f"## CogLens chat\n`{pipe.model_path}` ({config.variant}). A new {media_kind} starts a "
                    "new conversation.")
        with gr.Row():
            with gr.Column(scale=2):
                if is_video:
                    media = gr.Video(label="Video", sources=["upload"], elem_id="media")
                else:
                    media = gr.Image(label="Image", type="pil", sources=["upload"], elem_id="media")
                boxes = gr.Image(label="Grounding boxes", type="pil", format="png", interactive=False,
                                 visible=not is_video, elem_id="boxes")
                template = gr.Radio(list(TEMPLATE_VERSIONS), value=config.template_version,
                                    label="Template", elem_id="template")
                with gr.Accordion("Sampling", open=True):
                    temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0 = greedy)")
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")
                    top_k = gr.Slider(0, 100, value=0, step=1, label="Top-k (0 = off)")
                    most_tokens = min(2048, config.max_position_embeddings)
                    max_new_tokens = gr.Slider(1, most_tokens, value=256, step=1, label="Max new tokens")
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Conversation", height=520, elem_id="chatbot")
                question = gr.Textbox(label="Question", elem_id="question",
                                      placeholder=f"Ask about the {media_kind}, then press Enter")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    stop = gr.Button("Stop", elem_id="stop")
                    clear = gr.Button("Clear", elem_id="clear")

        answer_inputs = [question, chatbot, state, template, temperature, top_p, top_k, max_new_tokens]
        answer_outputs = [state, chatbot, question, boxes]
        answering = [
            trigger(handlers.respond, answer_inputs, answer_outputs, concurrency_limit=concurrency,
                    concurrency_id="answer")
            for trigger in (send.click, question.submit)
        ]
        stop.click(None, None, None, cancels=answering)
        clear.click(handlers.clear, [state], [state, chatbot, boxes], cancels=answering)
        media.change(handlers.change_media, [media, state], [state, chatbot, boxes], cancels=answering)
    return demo


def launch(pipe: Any, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> None:
    """Serve the demo until Ctrl-C."""
    scheduler = Scheduler(pipe.engine, max_queue=MAX_QUEUE, request_timeout_s=REQUEST_TIMEOUT_S)
    scheduler.start()
    try:
        demo = build_demo(pipe, scheduler).queue()
        demo.launch(server_name=host, server_port=port, share=share, show_error=True)
    finally:
        scheduler.stop()
