"""Protocol-neutral serving: a :class:`Conversation` -> model inputs -> engine requests -> results.

Protocol packages only translate their wire format onto these calls:

>>> adapter = service.adapter_for(body.model, body.adapter_id)  # doctest: +SKIP
>>> prompt = await service.prepare(conversation, Requested(max_tokens=body.max_tokens))  # doctest: +SKIP
>>> group = service.submit(prompt, body.to_sampling_params(prompt.max_new_tokens), protocol="openai", adapter=adapter)
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
import os
import queue
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import torch

from ..engine import GenerationRequest, RequestGroup, SamplingParams, Scheduler, TokenEvent, fit_new_tokens
from ..modeling.routing import VISION_TOKEN_TYPE
from ..processing.conversation import build_conversation_input_ids
from ..processing.processor import ProcessorLayout, VisionLayout
from ..processing.template import TEMPLATE_VERSIONS
from .errors import InvalidRequestError, ModelNotFoundError, UnsupportedInputError, limit_error
from .limits import ServeLimits
from .media import MediaLoader
from .messages import Conversation, MediaRef

# What huggingface_hub's InferenceClient sends as ``model`` when pointed at a server's URL ("tgi" before 0.25):
# TGI serves one model and ignores the field, so these mean the served model here too.
ANY_MODEL = ("dummy", "tgi")
MIN_TEMPERATURE = 1e-5  # below this, sampling is greedy decoding (vLLM draws the same line)


@dataclass(frozen=True)
class Requested:
    """What a request asks to generate, in its protocol's field names: checked by :meth:`GenerationService.prepare`
    before any media is decoded (choices and seeds first, the token budget once the prompt is tokenized)."""

    max_tokens: int | None = None  # None: ``default_max_tokens``, capped by the room left; else all the room
    max_tokens_param: str = "max_tokens"
    default_max_tokens: int | None = None
    n: int = 1
    n_param: str = "n"
    seed: int | None = None
    seed_param: str = "seed"


@dataclass(frozen=True)
class PreparedPrompt:
    """Model inputs of one conversation, ready to become engine requests."""

    input_ids: torch.Tensor
    token_type_ids: torch.Tensor
    images: list[torch.Tensor]
    text: str  # what the client wrote as the prompt (echoed by vLLM's /generate)
    max_new_tokens: int  # what the request asked for, fitted to the context

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
    top_logprobs: list[list[tuple[int, float]]] = dataclasses.field(default_factory=list)  # per token, if asked
    prompt_logprobs: list[float | None] | None = None  # per prompt token, if asked
    seconds: list[float] = dataclasses.field(default_factory=list)  # perf_counter when each token was produced

    @classmethod
    def of(cls, events: list[TokenEvent], prompt_tokens: int) -> Completion:
        tokens = [e for e in events if e.token_id is not None]
        return cls("".join(e.text for e in tokens), [int(e.token_id or 0) for e in tokens],
                   [float(e.logprob or 0.0) for e in tokens], [e.text for e in tokens],
                   (events[-1].finish_reason or "") if events else "", prompt_tokens,
                   [list(e.top_logprobs) for e in tokens], events[0].prompt_logprobs if events else None,
                   [e.seconds for e in tokens])

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
        bank = scheduler.engine.adapters
        self.adapter_names: tuple[str, ...] = bank.names if bank is not None else ()
        check_adapter_names(model_names, self.adapter_names)
        self.template = template
        self.eos_ids = set(scheduler.engine.eos_ids)
        self.special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
        # Prompts are built without a context check: it comes after truncation, with the token budget.
        config = self.config
        self._layout = ProcessorLayout(
            variant=config.variant, template_version=config.template_version,
            num_image_tokens=config.num_image_tokens, image_token_id=config.image_token_id,
            max_position_embeddings=None, bos_token_id=config.bos_token_id,
            vision_config=VisionLayout(config.vision_config.image_size))
        self._tokenizers = TokenizerPool(tokenizer, size=min(4, os.cpu_count() or 1))
        # No token is longer than this many characters, so a prompt of more characters than
        # max_prompt_tokens * this is over the limit without tokenizing it.
        self._max_token_chars = max(1, max((len(token) for token in tokenizer.get_vocab()), default=1))

    @property
    def model_name(self) -> str:
        return self.model_names[0]

    def check_model(self, name: str | None, *, param: str = "model") -> None:
        """Unknown model names are a 404 (``None``/empty, or a placeholder of TGI's clients, means the served
        model); a loaded adapter's name is a model name too (vLLM's convention)."""
        if name and name not in self.model_names and name not in ANY_MODEL and name not in self.adapter_names:
            served = ", ".join(repr(n) for n in [*self.model_names, *self.adapter_names])
            raise ModelNotFoundError(f"model {name!r} is not served here; this server serves {served}",
                                     param=param, code="model_not_found")

    def adapter_for(self, model: str | None, adapter_id: str | None, *, model_param: str = "model",
                    adapter_param: str = "adapter_id") -> str | None:
        """The adapter a request picks (None: the base model), by ``adapter_id`` (TGI's and MindIE's field) or by
        naming it as ``model`` (OpenAI's and vLLM's way). Unknown names are a 404 listing what is loaded."""
        self.check_model(model, param=model_param)
        by_model = model if model in self.adapter_names else None
        if not adapter_id:  # "" is how TGI's clients send "no adapter"
            return by_model
        if adapter_id not in self.adapter_names:
            loaded = (f"the loaded adapters are {', '.join(repr(n) for n in self.adapter_names)}"
                      if self.adapter_names else "this server has no adapters (start it with --adapter NAME=PATH)")
            raise ModelNotFoundError(f"{adapter_param}={adapter_id!r} is not a loaded adapter; {loaded}",
                                     param=adapter_param, code="adapter_not_found")
        if by_model is not None and by_model != adapter_id:
            raise InvalidRequestError(f"{model_param}={model!r} and {adapter_param}={adapter_id!r} name two "
                                      "different adapters; send one of them", param=adapter_param)
        return adapter_id

    async def prepare(self, conversation: Conversation, requested: Requested, *, template: str | None = None,
                      template_param: str = "template", truncate: int | None = None,
                      truncate_param: str = "truncate") -> PreparedPrompt:
        """Check the request's limits, cheapest first, then load its media and build its input ids.

        Order: choices and seed, media counts, prompt characters, tokens, context and token budget (images as
        placeholders of their exact span), then media headers against the pixel limits and the request's pixel
        budget, and only then decoding. Tokenizing runs off the event loop on one of a few tokenizer copies, so a
        long prompt holds up no other request. ``truncate`` keeps only the last ``truncate`` text tokens (TGI's
        ``truncate``); images always stay.
        """
        template = template or self.template
        if template is not None and template not in TEMPLATE_VERSIONS:
            raise InvalidRequestError(f"{template_param}={template!r} is not a template; use "
                                      f"{', '.join(TEMPLATE_VERSIONS)}", param=template_param)
        self._check_choices(requested)
        refs = self._check_media(conversation)
        self._check_characters(conversation, truncated=truncate is not None)
        size = self.config.vision_config.image_size
        budget = self.media.budget()
        if self.config.is_video:
            video = await self.media.video(refs[0], size, budget=budget) if refs else None
            inputs = await anyio.to_thread.run_sync(self._build, conversation, {"video": video}, template)
            ids, types = self._fit(inputs, truncate, truncate_param)
            max_new = self._fit_new_tokens(types, requested)
            images = list(inputs["images"] or [])
        else:
            placeholders = {ref: torch.zeros(1).expand(3, size, size) for ref in refs}
            inputs = await anyio.to_thread.run_sync(self._build, conversation, {"images": placeholders}, template)
            ids, types = self._fit(inputs, truncate, truncate_param)
            max_new = self._fit_new_tokens(types, requested)
            ref_of = {id(tensor): ref for ref, tensor in placeholders.items()}
            images = await self.media.images([ref_of[id(tensor)] for tensor in inputs["images"] or []], size,
                                             budget=budget)
        return PreparedPrompt(ids, types, images, conversation.prompt_text, max_new)

    def _check_choices(self, requested: Requested) -> None:
        n, seed = requested.n, requested.seed
        if n > self.limits.max_n:
            raise limit_error(f"{requested.n_param}={n} choices asked for", "max_n", str(self.limits.max_n),
                              param=requested.n_param)
        if seed is not None and not -(2**63) <= seed < 2**63:
            raise InvalidRequestError(f"{requested.seed_param}={seed} is outside the 64-bit range",
                                      param=requested.seed_param)
        if seed is not None and seed + n - 1 >= 2**63:
            raise InvalidRequestError(f"{requested.seed_param}={seed} with {n} choices: choice i samples with seed+i, "
                                      "which must stay below 2**63", param=requested.seed_param)

    def _fit_new_tokens(self, token_type_ids: torch.Tensor, requested: Requested) -> int:
        """The new tokens asked for if they fit the context (else a 400 naming the field); unasked, the protocol's
        default capped by the room left, or all the room."""
        context, param = int(self.config.max_position_embeddings), requested.max_tokens_param
        if requested.max_tokens is not None:
            return fit_new_tokens(token_type_ids, context, requested.max_tokens, param=param)
        room = fit_new_tokens(token_type_ids, context, None, param=param)
        return room if requested.default_max_tokens is None else min(requested.default_max_tokens, room)

    def _fit(self, inputs: dict[str, Any], truncate: int | None, param: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids, types = inputs["input_ids"], inputs["token_type_ids"]
        if truncate is not None:
            ids, types = truncate_text(ids, types, truncate, param=param)
        if ids.numel() > self.limits.max_prompt_tokens:
            raise limit_error(f"the prompt is {ids.numel()} tokens (images included)", "max_prompt_tokens",
                              f"{self.limits.max_prompt_tokens} tokens")
        return ids, types

    def submit(self, prompt: PreparedPrompt, params: SamplingParams, *, n: int = 1, protocol: str,
               adapter: str | None = None) -> RequestGroup:
        """Queue ``n`` choices of ``prompt`` (seeded choices get seeds ``seed, seed+1, ...``) for ``adapter`` (from
        :meth:`adapter_for`); ``n`` and the seed were checked by :meth:`prepare`."""
        if not params.greedy and params.temperature < MIN_TEMPERATURE:
            # A temperature this small is greedy in effect, and dividing by it overflows the logits to inf.
            params = dataclasses.replace(params, do_sample=False)
        base = f"{protocol}-{uuid.uuid4().hex[:16]}"
        requests = []
        for i in range(n):
            choice = params if params.seed is None or i == 0 else dataclasses.replace(params, seed=params.seed + i)
            requests.append(GenerationRequest(prompt.input_ids, prompt.token_type_ids, list(prompt.images), choice,
                                              request_id=f"{base}-{i}", adapter=adapter))
        return self.scheduler.submit(requests, protocol=protocol)

    async def collect(self, group: RequestGroup) -> list[Completion]:
        """Wait for every choice of ``group``; cancels the rest if this is cancelled (client gone)."""
        events: list[list[TokenEvent]] = [[] for _ in group.request_ids]
        try:
            async for index, event in group.events():
                events[index].append(event)
        finally:
            group.cancel()
        return [Completion.of(choice, group.prompt_tokens) for choice in events]

    async def token_texts(self, ids: list[int]) -> list[str]:
        """Each token's own text (the per-token ``token``/``text`` of OpenAI and TGI), decoded off the loop."""
        def decode() -> list[str]:
            with self._tokenizers.borrow() as tokenizer:
                return [tokenizer.decode([token_id]) for token_id in ids]

        return await anyio.to_thread.run_sync(decode)

    def stop_kind(self, token_id: int | None) -> str:
        """Why a "stop" finish happened: ``"eos"`` (an end-of-sequence token) or ``"stop_sequence"``."""
        return "eos" if token_id in self.eos_ids else "stop_sequence"

    # --- internals --------------------------------------------------------------------------------

    def _check_media(self, conversation: Conversation) -> list[MediaRef]:
        """The media to load, after the checks that need no decoding (counts, kinds, one per turn)."""
        refs = conversation.media
        if len(refs) > self.limits.max_media_parts:
            raise limit_error(f"the request has {len(refs)} images and videos", "max_media_parts",
                              str(self.limits.max_media_parts), param=refs[self.limits.max_media_parts].where)
        videos = [r for r in refs if r.kind == "video"]
        images = [r for r in refs if r.kind == "image"]
        if self.config.is_video:
            if images:
                raise UnsupportedInputError(f"{images[0].where}: this is a video model (CogVLM2-Video); send a "
                                            "video_url part instead of an image", param=images[0].where)
            if len(videos) > 1:
                raise InvalidRequestError(f"{videos[1].where}: CogVLM2-Video takes one video per conversation, "
                                          f"got {len(videos)}", param=videos[1].where)
            return videos
        if videos:
            raise UnsupportedInputError(
                f"{videos[0].where}: video input needs a CogVLM2-Video model (e.g. tiny:cogvlm2-video); this "
                f"server runs a {self.config.variant} model, which takes images", param=videos[0].where)
        for turn in conversation.turns:
            if len(turn.media) > 1:
                raise InvalidRequestError(
                    f"{turn.media[1].where}: one image per message; CogVLM places each image at the start of the "
                    "turn that sent it, so send earlier images with earlier user messages", param=turn.media[1].where)
        return images

    def _check_characters(self, conversation: Conversation, *, truncated: bool) -> None:
        """Refuse, without tokenizing, a prompt with more characters than its token limits can hold: the prompt
        limit, and (unless it is to be truncated) the context, since every text token takes a position."""
        characters = sum(len(turn.query) + len(turn.answer or "") for turn in conversation.turns)
        if characters > self.limits.max_prompt_tokens * self._max_token_chars:
            raise limit_error(f"the prompt is {characters} characters, more than {self.limits.max_prompt_tokens} "
                              "tokens can hold", "max_prompt_tokens", f"{self.limits.max_prompt_tokens} tokens")
        context = int(self.config.max_position_embeddings)
        if not truncated and characters > context * self._max_token_chars:
            raise InvalidRequestError(
                f"the prompt is {characters} characters, more than the model's context of {context} positions can "
                "hold (max_position_embeddings in config.json); shorten the query or history",
                code="context_length_exceeded")

    def _build(self, conversation: Conversation, layout: dict[str, Any], template: str | None) -> dict[str, Any]:
        history: list[tuple[Any, ...]] = []
        multi = len(layout.get("images", {})) > 1
        images: list[torch.Tensor] = []
        if "video" in layout:
            images = [layout["video"]] if layout["video"] is not None else []
            history = [(t.query, t.answer) for t in conversation.history]
        else:
            loaded: dict[MediaRef, torch.Tensor] = layout["images"]  # placeholders until the tokens fit
            for turn in conversation.history:
                image = loaded[turn.media[0]] if turn.media else None
                history.append((turn.query, turn.answer, image) if multi and image is not None
                               else (turn.query, turn.answer))
            current = conversation.current.media
            # several images: the current turn's own; one: the conversation's image, whichever turn sent it
            images = ([loaded[current[0]]] if current else []) if multi else list(loaded.values())
        with self._tokenizers.borrow() as tokenizer:
            return build_conversation_input_ids(
                tokenizer, config=self._layout, query=conversation.current.query, history=history,
                images=images or None, template_version=template, allow_multiple_images=multi)


def check_adapter_names(model_names: list[str], adapter_names: Iterable[str]) -> None:
    """An adapter's name must not be one the base model answers to: ``model`` would name both."""
    clash = sorted(set(adapter_names) & {*model_names, *ANY_MODEL})
    if clash:
        names = ", ".join([*model_names, *(f"{n} (TGI clients' placeholder)" for n in ANY_MODEL)])
        raise ValueError(f"--adapter {clash[0]}=...: {clash[0]!r} is also a name of the served model (its names: "
                         f"{names}); give the adapter another name")


class TokenizerPool:
    """A few copies of the prompt tokenizer, lent out one per prompt.

    A fast tokenizer must not be used by two threads at once ("Already borrowed"), and the engine thread decodes
    with the pipeline's own; with several copies one long prompt holds up only the copy it borrowed."""

    def __init__(self, tokenizer: Any, *, size: int) -> None:
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(size):
            self._free.put(copy.deepcopy(tokenizer))

    @contextmanager
    def borrow(self) -> Iterator[Any]:
        tokenizer = self._free.get()
        try:
            yield tokenizer
        finally:
            self._free.put(tokenizer)


def truncate_text(ids: torch.Tensor, types: torch.Tensor, keep: int, *,
                  param: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the earliest text tokens after the last image (or frame) until at most ``keep`` remain there.

    ``[bos]``, the vision spans and the text between them stay: cutting there would join two spans."""
    if keep < 1:
        raise InvalidRequestError(f"{param}={keep} must be >= 1", param=param)
    vision = (types == VISION_TOKEN_TYPE).nonzero().flatten()
    start = int(vision[-1]) + 1 if vision.numel() else 1  # after the last vision token, else after [bos]
    surplus = ids.numel() - start - keep
    if surplus <= 0:
        return ids, types
    kept = torch.ones_like(types, dtype=torch.bool)
    kept[start:start + surplus] = False
    return ids[kept], types[kept]
