"""Protocol-neutral serving: a :class:`Conversation` -> model inputs -> engine requests -> results.

Protocol packages only translate their wire format onto these calls:

>>> prompt = await service.prepare(conversation, template=None)          # doctest: +SKIP
>>> max_new = service.fit_max_tokens(prompt, body.max_tokens, param="max_tokens")
>>> group = service.submit(prompt, params, n=1, protocol="openai")
>>> async for index, event in group.events(): ...

Image layout: CogVLM takes one image per conversation, placed right after ``[bos]`` whatever turn sent it
(the original demos keep the *last* image of the conversation; with exactly one, that is the same). A
conversation with several images uses coglens's multi-image extension: each image's span opens the turn that
sent it (``allow_multiple_images=True``; the released checkpoints were trained with one image). A turn may
carry one image. CogVLM2-Video takes one video per conversation, from any turn.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import torch

from ..engine import GenerationRequest, RequestGroup, SamplingParams, Scheduler, fit_new_tokens
from ..processing.conversation import build_conversation_input_ids
from ..processing.template import TEMPLATE_VERSIONS
from .errors import InvalidRequestError, ModelNotFoundError, UnsupportedInputError, limit_error
from .limits import ServeLimits
from .media import MediaLoader
from .messages import Conversation, MediaRef

MIN_TEMPERATURE = 1e-5  # below this, sampling is greedy decoding (vLLM draws the same line)


@dataclass(frozen=True)
class PreparedPrompt:
    """Model inputs of one conversation, ready to become engine requests."""

    input_ids: torch.Tensor
    token_type_ids: torch.Tensor
    images: list[torch.Tensor]
    text: str  # what the client wrote as the prompt (echoed by vLLM's /generate)

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.numel())


@dataclass(frozen=True)
class Completion:
    """One finished choice, gathered from its events."""

    text: str
    token_ids: list[int]
    logprobs: list[float]
    pieces: list[str]  # the text each token made visible ("" while a stop string or a character is pending)
    finish_reason: str
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


class GenerationService:
    def __init__(self, *, model: Any, tokenizer: Any, scheduler: Scheduler, media: MediaLoader, limits: ServeLimits,
                 model_names: list[str], template: str | None = None) -> None:
        self.config = model.config
        self.scheduler = scheduler
        self.media = media
        self.limits = limits
        self.model_names = model_names
        self.template = template
        self.eos_ids = set(scheduler.engine.eos_ids)
        self.special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
        # The engine thread decodes with the pipeline's tokenizer; a private copy for prompts means the two
        # threads never share one (fast tokenizers can fail with "Already borrowed" when they do).
        self._tokenizer = copy.deepcopy(tokenizer)
        self._tokenizer_lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self.model_names[0]

    def check_model(self, name: str | None, *, param: str = "model") -> None:
        """Unknown model names are a 404 (``None``/empty means the served model)."""
        if name and name not in self.model_names:
            served = ", ".join(repr(n) for n in self.model_names)
            raise ModelNotFoundError(f"model {name!r} is not served here; this server serves {served}",
                                     param=param, code="model_not_found")

    async def prepare(self, conversation: Conversation, *, template: str | None = None,
                      template_param: str = "template") -> PreparedPrompt:
        """Load the conversation's media and build its input ids (tokenizing off the event loop)."""
        template = template or self.template
        if template is not None and template not in TEMPLATE_VERSIONS:
            raise InvalidRequestError(f"{template_param}={template!r} is not a template; use "
                                      f"{', '.join(TEMPLATE_VERSIONS)}", param=template_param)
        layout = await self._load_media(conversation)
        inputs = await anyio.to_thread.run_sync(self._build, conversation, layout, template)
        ids, types = inputs["input_ids"], inputs["token_type_ids"]
        if ids.numel() > self.limits.max_prompt_tokens:
            raise limit_error(f"the prompt is {ids.numel()} tokens (images included)", "max_prompt_tokens",
                              f"{self.limits.max_prompt_tokens} tokens")
        return PreparedPrompt(ids, types, list(inputs["images"] or []), conversation.prompt_text)

    def fit_max_tokens(self, prompt: PreparedPrompt, requested: int | None, *, param: str) -> int:
        """``requested`` new tokens if they fit the model's context, else a 400 naming ``param``; None = all room."""
        return fit_new_tokens(prompt.token_type_ids, int(self.config.max_position_embeddings), requested, param=param)

    def submit(self, prompt: PreparedPrompt, params: SamplingParams, *, n: int = 1, protocol: str) -> RequestGroup:
        """Queue ``n`` choices of ``prompt`` (seeded choices get seeds ``seed, seed+1, ...``)."""
        if n > self.limits.max_n:
            raise limit_error(f"n={n} choices asked for", "max_n", str(self.limits.max_n), param="n")
        if params.seed is not None and not -(2**63) <= params.seed < 2**63 - self.limits.max_n:
            raise InvalidRequestError(f"seed={params.seed} is outside the 64-bit range", param="seed")
        if not params.greedy and params.temperature < MIN_TEMPERATURE:
            # A temperature this small is greedy in effect, and dividing by it overflows the logits to inf.
            params = dataclasses.replace(params, do_sample=False)
        base = f"{protocol}-{uuid.uuid4().hex[:16]}"
        requests = []
        for i in range(n):
            choice = params if params.seed is None or i == 0 else dataclasses.replace(params, seed=params.seed + i)
            requests.append(GenerationRequest(prompt.input_ids, prompt.token_type_ids, list(prompt.images), choice,
                                              request_id=f"{base}-{i}"))
        return self.scheduler.submit(requests, protocol=protocol)

    async def collect(self, group: RequestGroup) -> list[Completion]:
        """Wait for every choice of ``group``; cancels the rest if this is cancelled (client gone)."""
        n = len(group.request_ids)
        pieces: list[list[str]] = [[] for _ in range(n)]
        tokens: list[list[int]] = [[] for _ in range(n)]
        logprobs: list[list[float]] = [[] for _ in range(n)]
        reasons: list[str] = [""] * n
        try:
            async for index, event in group.events():
                if event.token_id is not None:
                    pieces[index].append(event.text)
                    tokens[index].append(event.token_id)
                    logprobs[index].append(float(event.logprob or 0.0))
                reasons[index] = event.finish_reason or ""
        finally:
            group.cancel()
        return [Completion("".join(pieces[i]), tokens[i], logprobs[i], pieces[i], reasons[i], group.prompt_tokens)
                for i in range(n)]

    def stop_kind(self, token_id: int | None) -> str:
        """Why a "stop" finish happened: ``"eos"`` (an end-of-sequence token) or ``"stop_sequence"``."""
        return "eos" if token_id in self.eos_ids else "stop_sequence"

    # --- internals --------------------------------------------------------------------------------

    async def _load_media(self, conversation: Conversation) -> dict[str, Any]:
        refs = conversation.media
        videos = [r for r in refs if r.kind == "video"]
        images = [r for r in refs if r.kind == "image"]
        size = self.config.vision_config.image_size
        if self.config.is_video:
            if images:
                raise UnsupportedInputError(f"{images[0].where}: this is a video model (CogVLM2-Video); send a "
                                            "video_url part instead of an image", param=images[0].where)
            if len(videos) > 1:
                raise InvalidRequestError(f"{videos[1].where}: CogVLM2-Video takes one video per conversation, "
                                          f"got {len(videos)}", param=videos[1].where)
            return {"video": await self.media.video(videos[0], size) if videos else None}
        if videos:
            raise UnsupportedInputError(
                f"{videos[0].where}: video input needs a CogVLM2-Video model (e.g. tiny:cogvlm2-video); this "
                f"server runs a {self.config.variant} model, which takes images", param=videos[0].where)
        for turn in conversation.turns:
            if len(turn.media) > 1:
                raise InvalidRequestError(
                    f"{turn.media[1].where}: one image per message; CogVLM places each image at the start of the "
                    "turn that sent it, so send earlier images with earlier user messages", param=turn.media[1].where)
        loaded: dict[MediaRef, torch.Tensor] = {}
        for ref in images:
            loaded[ref] = await self.media.image(ref, size)
        return {"images": loaded}

    def _build(self, conversation: Conversation, layout: dict[str, Any], template: str | None) -> dict[str, Any]:
        history: list[tuple[Any, ...]] = []
        multi = len(layout.get("images", {})) > 1
        images: list[torch.Tensor] = []
        if "video" in layout:
            images = [layout["video"]] if layout["video"] is not None else []
            history = [(t.query, t.answer) for t in conversation.history]
        else:
            loaded: dict[MediaRef, torch.Tensor] = layout["images"]
            for turn in conversation.history:
                image = loaded[turn.media[0]] if turn.media else None
                history.append((turn.query, turn.answer, image) if multi and image is not None
                               else (turn.query, turn.answer))
            current = conversation.current.media
            # several images: the current turn's own; one: the conversation's image, whichever turn sent it
            images = ([loaded[current[0]]] if current else []) if multi else list(loaded.values())
        with self._tokenizer_lock:
            return build_conversation_input_ids(
                self._tokenizer, config=self.config, query=conversation.current.query, history=history,
                images=images or None, template_version=template, allow_multiple_images=multi)
