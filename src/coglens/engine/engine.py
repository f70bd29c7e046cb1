"""Batched, streaming generation over a KV cache; requests join and leave between decode steps.

The engine is synchronous: ``step()`` runs one decode step for every running request and prefills waiting
ones. The CLI, the terminal chat and the lens drive it directly (``generate`` / ``stream``); the server and the
web demo drive it through :class:`~coglens.engine.scheduler.Scheduler`, one thread that steps it while others
add and abort requests (``add`` and ``abort`` are thread-safe).
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.generation.logits_process import WatermarkLogitsProcessor

from ..modeling.adapters import AdapterBank
from ..modeling.modeling_cogvlm import execution_device
from ..modeling.routing import LANGUAGE_TOKEN_TYPE, VISION_TOKEN_TYPE, build_position_ids
from ..processing.padding import left_padded_batch
from .cache import BatchKVCache
from .compiled import DecodeStep
from .context import fit_new_tokens
from .errors import EngineInputError
from .params import GenerationRequest, GenerationResult, SamplingParams, TokenEvent
from .sampling import Draw, needs_history, sample_batch, sample_next, watermark_processor
from .slots import DecodeSlots

PromptLogprobs = list[float | None]


@dataclass(eq=False)  # identity, not tensor comparison, for `in` and `remove`
class _Sequence:
    request: GenerationRequest
    generator: torch.Generator | None = None
    generated: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    decoded: str = ""  # the whole answer so far, detokenised incrementally (see _decode_new)
    prefix_offset: int = 0  # the detokeniser's window over `generated`
    read_offset: int = 0
    text: str = ""  # what has been streamed: `decoded` less held-back stop-string prefixes
    finish_reason: str | None = None
    events: deque[TokenEvent] = field(default_factory=deque)


@dataclass
class EngineStats:
    """Counters the server exports as metrics: they show batching at work."""

    prefill_batches: int = 0
    prefill_sequences: int = 0
    decode_steps: int = 0
    decode_rows: int = 0  # sum of the batch sizes of all decode steps
    generated_tokens: int = 0
    max_running: int = 0
    mixed_adapter_steps: int = 0  # decode steps whose rows ran different adapters (or adapters and the base model)


class Engine:
    """``adapters``: LoRA adapters that requests pick by name (``GenerationRequest.adapter``); rows of different
    adapters are prefilled one adapter at a time and decoded in one batch, each with its own adapter.

    ``compile``: run decode steps through ``torch.compile`` (True, False, or "auto": where measured to pay, see
    :mod:`coglens.engine.compiled`); the first step at batch 1 and at a larger batch compiles (seconds to minutes,
    or ahead of time with :meth:`warm_up`), later ones reuse the graphs.
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_batch_size: int = 8,
                 adapters: AdapterBank | None = None, compile: bool | str = False) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.adapters = adapters
        self.max_batch_size = max_batch_size
        self.device = execution_device(model.get_input_embeddings())
        self.max_positions = int(model.config.max_position_embeddings)
        self.eos_ids = _eos_ids(model, tokenizer)
        self.vocab_size = int(model.config.vocab_size)
        self._watermark: WatermarkLogitsProcessor | None = None  # built for the first request that asks for it
        self.pad_id = 0
        self.stats = EngineStats()
        self.decode_step = DecodeStep(model, self.device, compile=compile, adapters=adapters)
        self._lock = threading.Lock()
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._by_id: dict[str, _Sequence] = {}
        self._aborted: set[str] = set()
        self._reset_batch()

    @torch.inference_mode()  # as every step: a compiled step's guards tell inference tensors from others
    def _reset_batch(self) -> None:
        self._slots = DecodeSlots(self.device)

    # --- public API -----------------------------------------------------------------------------------

    def add(self, request: GenerationRequest) -> None:
        """Queue a request; it is prefilled at the next step with room in the batch."""
        self._check_request(request)
        self._enqueue(request)

    def abort(self, request_id: str) -> None:
        """Stop a request (e.g. its client went away); it leaves the batch at the next step."""
        with self._lock:
            if request_id in self._by_id:
                self._aborted.add(request_id)

    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    @torch.inference_mode()
    def step(self) -> list[TokenEvent]:
        """Decode one token for every running request, then admit waiting ones; returns the new events."""
        events: list[TokenEvent] = []
        try:
            self._drop_aborted(events)
            if self._running:
                events += self._decode()
            admitted = self._admit()
            if admitted:
                events += self._prefill(admitted)
            self._retire()
        except BaseException:
            self.reset()  # a forward that failed half-way leaves the cache of every row inconsistent
            raise
        self.stats.max_running = max(self.stats.max_running, len(self._running))
        return events

    def reset(self) -> None:
        """Drop every request, running or waiting (after a failed step: the batch's cache cannot be trusted)."""
        with self._lock:
            self._waiting.clear()
            self._running = []
            self._by_id.clear()
            self._aborted.clear()
        self._reset_batch()

    def stream(self, request: GenerationRequest, *, stop: threading.Event | None = None) -> Iterator[TokenEvent]:
        """Run one request to the end, yielding its events as they come (drives the engine itself).

        A request that does not fit the context fails here, before any event; it joins the engine when the
        iteration starts, so a stream never iterated holds nothing. Setting ``stop`` (from another thread, or from
        a signal handler: it takes no engine lock) aborts the request before the next step; the stream then ends
        with an "abort" event. Closing the stream early aborts the request too.
        """
        self._check_request(request)
        return self._drive(request, stop)

    def generate(self, requests: Iterable[GenerationRequest]) -> list[GenerationResult]:
        """Run requests together (batched up to ``max_batch_size``) and return their results in order."""
        requests = list(requests)
        for r in requests:
            self.add(r)
        seqs = [self._by_id[r.request_id] for r in requests]
        while any(s.finish_reason is None for s in seqs):
            self.step()
        results = [self.result(r.request_id) for r in requests]
        for r in requests:
            self.release(r.request_id)
        return results

    def warm_up(self) -> None:
        """Compile the decode step before the first request waits for it (a no-op when it runs uncompiled): a
        graph for batch 1 and one for larger batches (a dynamic size), both with a dynamic column count."""
        if not self.decode_step.compiled:
            return
        ids = torch.ones(4, dtype=torch.long)
        params = SamplingParams(max_new_tokens=3, ignore_eos=True)
        for rows in sorted({1, min(2, self.max_batch_size)}):
            self.generate([GenerationRequest(ids, torch.zeros_like(ids), params=params) for _ in range(rows)])
        self.stats = EngineStats()  # the warm-up is not traffic

    def result(self, request_id: str) -> GenerationResult:
        seq = self._by_id[request_id]
        return GenerationResult(request_id, list(seq.generated), seq.text, seq.finish_reason or "abort",
                                int(seq.request.input_ids.numel()), list(seq.logprobs))

    def release(self, request_id: str) -> None:
        """Forget a finished request once its caller has taken its events and result."""
        with self._lock:
            seq = self._by_id.get(request_id)
            if seq is not None and seq.finish_reason is not None and seq not in self._running:
                del self._by_id[request_id]

    def num_waiting(self) -> int:
        return len(self._waiting)

    def num_running(self) -> int:
        return len(self._running)

    # --- internals ------------------------------------------------------------------------------------

    def _check_request(self, request: GenerationRequest) -> None:
        """Refuse, at add time, what would otherwise fail inside a batched step and take the batch down."""
        fit_new_tokens(request.token_type_ids, self.max_positions, request.params.max_new_tokens)
        self._check_adapter(request.adapter)
        self._check_ids(request)
        self._check_images(request)

    def _check_adapter(self, name: str | None) -> None:
        names = self.adapters.names if self.adapters is not None else ()
        if name is not None and name not in names:
            loaded = f"the loaded adapters are {', '.join(names)}" if names else "no adapters are loaded"
            raise EngineInputError(f"adapter {name!r} is not loaded; {loaded}")

    def _check_ids(self, request: GenerationRequest) -> None:
        ids, types = request.input_ids, request.token_type_ids
        if not bool(((types == LANGUAGE_TOKEN_TYPE) | (types == VISION_TOKEN_TYPE)).all()):
            raise EngineInputError("token_type_ids may only hold 0 (language) and 1 (vision placeholder)")
        words = ids[types == LANGUAGE_TOKEN_TYPE]
        outside = words[(words < 0) | (words >= self.vocab_size)]
        if outside.numel():
            raise EngineInputError(f"input_ids holds token id {int(outside[0])}, outside this model's vocabulary "
                                   f"[0, {self.vocab_size})")
        stops = [t for t in request.params.stop_token_ids if t >= self.vocab_size]
        if stops:
            raise EngineInputError(f"stop_token_ids {stops} are outside this model's vocabulary [0, "
                                   f"{self.vocab_size})")

    def _check_images(self, request: GenerationRequest) -> None:
        """Images of the model's size, as many frames as the prompt's vision spans hold."""
        config = self.model.config
        size = config.vision_config.image_size
        frames = 0
        for image in request.images:
            tensor = isinstance(image, torch.Tensor)
            if not (tensor and image.dim() in (3, 4) and tuple(image.shape[-3:]) == (3, size, size)):
                shape = tuple(image.shape) if tensor else type(image).__name__
                raise EngineInputError(f"image of shape {shape}: this model takes (3, {size}, {size}) images or "
                                       f"(T, 3, {size}, {size}) clips; preprocess them with the model's processor")
            frames += image.shape[0] if image.dim() == 4 else 1
        slots = int((request.token_type_ids == VISION_TOKEN_TYPE).sum())
        if slots != frames * config.num_image_tokens:
            raise EngineInputError(
                f"the prompt has {slots} vision positions but its {frames} image(s)/frame(s) fill "
                f"{frames * config.num_image_tokens} ({config.num_image_tokens} each); build the prompt with the "
                "model's processor so that every image gets one span"
            )

    def _enqueue(self, request: GenerationRequest) -> None:
        seq = _Sequence(request, generator=self._generator(request.params.seed))
        with self._lock:
            if request.request_id in self._by_id:
                raise EngineInputError(f"request id {request.request_id!r} is already running")
            self._by_id[request.request_id] = seq
            self._waiting.append(seq)

    def _drive(self, request: GenerationRequest, stop: threading.Event | None) -> Iterator[TokenEvent]:
        """The stepping loop of :meth:`stream`."""
        self._enqueue(request)
        seq = self._by_id[request.request_id]
        try:
            while True:
                while seq.events:
                    event = seq.events.popleft()
                    yield event
                    if event.finished:
                        return
                if stop is not None and stop.is_set():
                    self.abort(request.request_id)
                self.step()
        finally:
            if seq.finish_reason is None:
                self.abort(request.request_id)
                self.step()  # takes the aborted row out of the batch
            self.release(request.request_id)

    def _generator(self, seed: int | None) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed if seed is not None else random.getrandbits(63))
        return gen

    def _admit(self) -> list[_Sequence]:
        with self._lock:
            room = self.max_batch_size - len(self._running)
            admitted = []
            while self._waiting and room > 0:
                admitted.append(self._waiting.popleft())
                room -= 1
        return admitted

    def _prefill(self, seqs: list[_Sequence]) -> list[TokenEvent]:
        """Prefill admitted rows, one forward pass per adapter among them (see :class:`AdapterBank`)."""
        groups: dict[str | None, list[_Sequence]] = {}
        for seq in seqs:
            groups.setdefault(seq.request.adapter, []).append(seq)
        return [event for group in groups.values() for event in self._prefill_group(group)]

    def _forward(self, seqs: list[_Sequence], **inputs: Any) -> Any:
        if self.adapters is None:
            return self.model(**inputs)
        return self.adapters.forward([s.request.adapter for s in seqs], **inputs)

    def _prefill_group(self, seqs: list[_Sequence]) -> list[TokenEvent]:
        ids, types, mask = left_padded_batch([s.request.input_ids for s in seqs],
                                             [s.request.token_type_ids for s in seqs], pad_token_id=self.pad_id)
        ids, types, mask = ids.to(self.device), types.to(self.device), mask.to(self.device)
        positions = build_position_ids(types, mask)
        cache = BatchKVCache()
        cache.token_types = types
        every_position = any(s.request.params.prompt_logprobs for s in seqs)  # only then: logits are big
        out = self._forward(seqs, input_ids=ids, images=[list(s.request.images) for s in seqs],
                            token_type_ids=types, attention_mask=mask, position_ids=positions, past_key_values=cache,
                            use_cache=True, logits_to_keep=0 if every_position else 1)
        self.stats.prefill_batches += 1
        self.stats.prefill_sequences += len(seqs)
        prompt_logprobs = [_prompt_logprobs(out.logits[row], s.request) if s.request.params.prompt_logprobs
                           else None for row, s in enumerate(seqs)]
        new_tokens, events = self._sample(seqs, out.logits[:, -1], prompt_logprobs)
        self._slots.admit(cache, mask, types, positions[:, -1] + 1, new_tokens)
        self._running += seqs
        return events

    def _decode(self) -> list[TokenEvent]:
        compiled = self.decode_step.use_compiled()
        window = self._slots.begin_step(bucketed=compiled)
        logits = self.decode_step.run_compiled(self._slots, window) if compiled else None
        if logits is None:
            if compiled:  # compiling failed: this step again, eagerly, in the exact window
                window = self._slots.begin_step(bucketed=False)
            out = self._forward(self._running, input_ids=window.input_ids, attention_mask=window.attention_mask,
                                position_ids=window.position_ids, past_key_values=self._slots, use_cache=True)
            logits = out.logits[:, -1]
        b = window.rows
        logits = logits[:b]
        self.stats.decode_steps += 1
        self.stats.decode_rows += b
        self.stats.mixed_adapter_steps += len({s.request.adapter for s in self._running}) > 1
        tokens, events = self._sample(self._running, logits)
        self._slots.end_step(tokens)
        return events

    def _sample(self, seqs: list[_Sequence], logits: torch.Tensor,
                prompt_logprobs: list[PromptLogprobs | None] | None = None) -> tuple[torch.Tensor, list[TokenEvent]]:
        """The next token of every row: rows without history-dependent settings in one batch on the device, the
        others one by one; finished rows (riding along until retired) are fed the pad token."""
        live = [row for row, seq in enumerate(seqs) if seq.finish_reason is None]
        batched = [row for row in live if not needs_history(seqs[row].request.params)]
        params = [seqs[row].request.params for row in batched]
        generators = [seqs[row].generator for row in batched]
        draws: dict[int, Draw] = {}
        if len(batched) == len(seqs):  # the usual step: every row at once, no gathering
            tokens, batch_draws = sample_batch(logits, params, generators)
        else:
            tokens = torch.full((len(seqs),), self.pad_id, dtype=torch.long, device=self.device)
            batch_draws = []
            if batched:
                index = torch.tensor(batched, device=self.device)
                chosen, batch_draws = sample_batch(logits.index_select(0, index), params, generators)
                tokens[index] = chosen
        draws.update(zip(batched, batch_draws, strict=True))
        for row in live:
            if row not in draws:
                seq = seqs[row]
                draws[row] = sample_next(logits[row], seq.request.params, seq.request.input_ids, seq.generated,
                                         seq.generator, self._watermark_for(seq.request.params))
                tokens[row] = draws[row].token
        events = [self._advance(seqs[row], draws[row], prompt_logprobs[row] if prompt_logprobs else None)
                  for row in live]
        self.stats.generated_tokens += len(events)
        return tokens, events

    def _watermark_for(self, params: SamplingParams) -> WatermarkLogitsProcessor | None:
        if not params.watermark:
            return None
        if self._watermark is None:
            self._watermark = watermark_processor(self.vocab_size, self.device)
        return self._watermark

    def _advance(self, seq: _Sequence, draw: Draw, prompt_logprobs: PromptLogprobs | None) -> TokenEvent:
        params = seq.request.params
        token, logprob = draw.token, draw.logprob
        seq.generated.append(token)
        seq.logprobs.append(logprob)
        is_eos = (token in self.eos_ids and not params.ignore_eos) or token in params.stop_token_ids
        text_ids = seq.generated[:-1] if is_eos else seq.generated  # an eos token is not text
        if not is_eos:
            seq.decoded += self._decode_new(seq, text_ids)
        visible, stopped = _visible_text(seq.decoded, params.stop)
        if is_eos or stopped:
            seq.finish_reason = "stop"
        elif len(seq.generated) >= params.max_new_tokens:
            seq.finish_reason = "length"
        if seq.finish_reason is not None and not stopped:
            seq.decoded += self._decode_new(seq, text_ids, final=True)
            visible = seq.decoded  # the end: release text held back for a possible stop string
        delta = visible[len(seq.text):]
        seq.text += delta
        event = TokenEvent(seq.request.request_id, token, delta, logprob, len(seq.generated) - 1,
                           seq.finish_reason, int(seq.request.input_ids.numel()), draw.top, prompt_logprobs)
        seq.events.append(event)
        return event

    def _decode_new(self, seq: _Sequence, ids: list[int], *, final: bool = False) -> str:
        """Text added by ``ids`` since the last read, decoding a short window instead of the whole answer.

        The window starts a few tokens back (``prefix_offset``) so that tokenizers that drop a leading space
        or merge bytes across tokens decode the new tokens as they would in the full text. A partial UTF-8
        character waits for the next token unless ``final``.
        """
        prefix = self.tokenizer.decode(ids[seq.prefix_offset:seq.read_offset], skip_special_tokens=True)
        full = self.tokenizer.decode(ids[seq.prefix_offset:], skip_special_tokens=True)
        if len(full) <= len(prefix) or (full.endswith("\ufffd") and not final):
            return ""
        seq.prefix_offset, seq.read_offset = seq.read_offset, len(ids)
        return full[len(prefix):]

    def _drop_aborted(self, events: list[TokenEvent]) -> None:
        with self._lock:
            aborted, self._aborted = self._aborted, set()
            for seq in list(self._waiting):
                if seq.request.request_id in aborted:
                    self._waiting.remove(seq)
                    self._finish_abort(seq, events)
        for seq in self._running:
            if seq.request.request_id in aborted and seq.finish_reason is None:
                self._finish_abort(seq, events)
        self._retire()

    def _finish_abort(self, seq: _Sequence, events: list[TokenEvent]) -> None:
        seq.finish_reason = "abort"
        event = TokenEvent(seq.request.request_id, None, "", None, len(seq.generated), "abort",
                           int(seq.request.input_ids.numel()))
        seq.events.append(event)
        events.append(event)

    def _retire(self) -> None:
        keep = [i for i, s in enumerate(self._running) if s.finish_reason is None]
        if len(keep) == len(self._running):
            return
        self._running = [self._running[i] for i in keep]
        self._slots.keep(keep)  # the storage stays for the next requests (a CUDA graph keeps its addresses)


def _prompt_logprobs(logits: torch.Tensor, request: GenerationRequest) -> PromptLogprobs:
    """log p(prompt token i | tokens before it) from one row's prefill logits (left padding comes first);
    None for the first token and for vision placeholders, which the model never predicts."""
    n = request.input_ids.numel()
    vision = request.token_type_ids[1:] != LANGUAGE_TOKEN_TYPE
    targets = request.input_ids[1:].masked_fill(vision, 0).to(logits.device)  # placeholders may be any id
    picked = torch.log_softmax(logits[-n:-1].float(), -1).gather(-1, targets[:, None])[:, 0]
    return [None, *(None if v else p for p, v in zip(picked.tolist(), vision.tolist(), strict=True))]


def _visible_text(text: str, stops: list[str]) -> tuple[str, bool]:
    """Text safe to show now: cut at a stop string, and hold back a suffix that may start one."""
    if stops and any(s in text for s in stops):
        return _cut_at_stop(text, stops), True
    end = len(text)
    for stop in stops:
        end -= _stop_prefix_at_end(text, end, stop)
    return text[:end], False


def _stop_prefix_at_end(text: str, end: int, stop: str) -> int:
    """Length of the longest proper prefix of ``stop`` that ``text[:end]`` ends with (0: none).

    Only the places where ``stop``'s first character occurs are tried, longest first, without copying the text.
    """
    at = text.find(stop[0], max(0, end - len(stop) + 1), end)
    while at != -1:
        if stop.startswith(text[at:end]):
            return end - at
        at = text.find(stop[0], at + 1, end)
    return 0


def _cut_at_stop(text: str, stops: list[str]) -> str:
    cut = min((text.find(s) for s in stops if s in text), default=len(text))
    return text[:cut]


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for source in (gen_eos, model.config.eos_token_id, getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(x) for x in source)
    return ids
