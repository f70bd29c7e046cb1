"""Pure functions from logits to the next token, testable without a model."""

from __future__ import annotations

from typing import NamedTuple

import torch
from transformers.generation.logits_process import TypicalLogitsWarper, WatermarkLogitsProcessor

from .params import SamplingParams

_FLOAT32 = torch.finfo(torch.float32)


class Draw(NamedTuple):
    """The chosen token, its log-probability, and the ``top_logprobs`` likeliest (id, log-probability) pairs,
    all under the distribution the token was drawn from."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


def watermark_processor(vocab_size: int, device: torch.device | str) -> WatermarkLogitsProcessor:
    """TGI's watermark (Kirchenbauer et al.): a green half of the vocabulary, seeded by the previous token with
    TGI's hash key, gets +2 on its logits. Built once per engine: it draws a million-entry table."""
    return WatermarkLogitsProcessor(vocab_size, device, greenlist_ratio=0.5, bias=2.0, hashing_key=15485863,
                                    seeding_scheme="lefthash", context_width=1)


def apply_penalties(logits: torch.Tensor, params: SamplingParams, prompt_ids: torch.Tensor,
                    generated: list[int]) -> torch.Tensor:
    """Repetition penalty as transformers applies it (over prompt and output); presence and frequency
    penalties as OpenAI defines them (over the output only)."""
    if params.repetition_penalty != 1.0:
        seen = torch.cat([prompt_ids.to(logits.device), torch.tensor(generated, dtype=torch.long,
                                                                     device=logits.device)]).unique()
        scores = logits[seen]
        penalised = torch.where(scores < 0, scores * params.repetition_penalty, scores / params.repetition_penalty)
        # a huge (or tiny) penalty overflows to +-inf; finite logits keep the distribution defined (no inf - inf)
        logits[seen] = penalised.clamp(_FLOAT32.min, _FLOAT32.max)
    if generated and (params.presence_penalty or params.frequency_penalty):
        ids, counts = torch.tensor(generated, device=logits.device).unique(return_counts=True)
        logits[ids] -= params.presence_penalty + params.frequency_penalty * counts.to(logits.dtype)
    return logits


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the smallest set reaching top_p
        drop[0] = False  # and always the likeliest token: a top_p that rounds to 0 in float32 keeps just it
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits


def filter_typical(logits: torch.Tensor, typical_p: float) -> torch.Tensor:
    """Locally typical sampling, by transformers' own warper (1-D logits)."""
    if typical_p >= 1.0:
        return logits
    return TypicalLogitsWarper(mass=typical_p)(None, logits[None])[0]


def sample_next(logits: torch.Tensor, params: SamplingParams, prompt_ids: torch.Tensor, generated: list[int],
                generator: torch.Generator | None, watermark: WatermarkLogitsProcessor | None = None) -> Draw:
    """(1-D vocab logits) -> the next token. ``watermark`` (see :func:`watermark_processor`; the engine passes
    it to requests with ``params.watermark``) biases the logits, in greedy and sampled decoding alike, as TGI."""
    logits = apply_penalties(logits.float().clone(), params, prompt_ids, generated)
    if watermark is not None:
        context = torch.cat([prompt_ids.to(logits.device),
                             torch.tensor(generated, dtype=torch.long, device=logits.device)])
        logits = watermark(context[None], logits[None])[0]
    if params.greedy:
        logprobs = torch.log_softmax(logits, -1)
        token = int(torch.argmax(logits))
    else:
        # shifted before scaling: a tiny temperature then sends the others to -inf instead of making inf - inf
        scaled = (logits - logits.max()) / params.temperature
        scaled = filter_typical(filter_top_k_top_p(scaled, params.top_k, params.top_p), params.typical_p)
        probs = scaled.softmax(-1)
        token = int(torch.multinomial(probs, 1, generator=generator))
        logprobs = torch.log(probs)
    return Draw(token, float(logprobs[token]), _top(logprobs, params.top_logprobs))


def needs_history(params: SamplingParams) -> bool:
    """Settings that read the row's tokens so far (penalties, watermark) or use transformers' 1-D warper
    (typical_p): such rows are sampled one by one with :func:`sample_next`; the others in one batch."""
    return (params.repetition_penalty != 1.0 or bool(params.presence_penalty) or bool(params.frequency_penalty)
            or params.watermark or params.typical_p < 1.0)


def sample_batch(logits: torch.Tensor, params: list[SamplingParams],
                 generators: list[torch.Generator | None]) -> tuple[torch.Tensor, list[Draw]]:
    """(B, vocab) logits -> the next token of every row, computed on the logits' device for the whole batch and
    read back in one transfer: the tokens stay on the device for the next step, the draws come to the host.

    The same distributions as :func:`sample_next` for rows without history-dependent settings (see
    :func:`needs_history`). A sampled row draws by the exponential race (argmax of p / E, E ~ Exp(1) from the
    row's own generator), so a seeded row gives the same tokens whatever else is in the batch.
    """
    logits = logits.float()
    logprobs = torch.log_softmax(logits, -1)
    tokens = logits.argmax(-1)
    if not all(p.greedy for p in params):
        greedy = torch.tensor([p.greedy for p in params], device=logits.device)
        sampled_logprobs, sampled = _sample_rows(logits, params, generators)
        tokens = torch.where(greedy, tokens, sampled)
        logprobs = torch.where(greedy[:, None], logprobs, sampled_logprobs)
    k = min(max(p.top_logprobs for p in params), logits.shape[-1])
    packed = [tokens.double()[:, None], logprobs.gather(1, tokens[:, None]).double()]
    if k:
        top_values, top_ids = torch.topk(logprobs, k)
        packed += [top_ids.double(), top_values.double()]
    host = torch.cat(packed, dim=1).tolist()  # the step's one device-to-host transfer
    draws = []
    for row, p in zip(host, params, strict=True):
        ids, values = row[2:2 + k][:p.top_logprobs], row[2 + k:][:p.top_logprobs]
        top = [(int(i), v) for i, v in zip(ids, values, strict=True) if v != float("-inf")]
        draws.append(Draw(int(row[0]), row[1], top))
    return tokens, draws


def _sample_rows(logits: torch.Tensor, params: list[SamplingParams],
                 generators: list[torch.Generator | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Temperature, top-k and top-p for every row at once (greedy rows get neutral settings); returns the
    log-probabilities of the filtered distributions and a token drawn from each."""
    device, vocab = logits.device, logits.shape[-1]
    temperature = torch.tensor([1.0 if p.greedy else p.temperature for p in params], device=device)
    top_k = torch.tensor([p.top_k if 0 < p.top_k < vocab and not p.greedy else vocab for p in params], device=device)
    top_p = torch.tensor([1.0 if p.greedy else p.top_p for p in params], device=device)
    scaled = (logits - logits.max(-1, keepdim=True).values) / temperature[:, None]
    if any(not p.greedy and (0 < p.top_k < vocab or p.top_p < 1.0) for p in params):
        ordered, order = torch.sort(scaled, dim=-1, descending=True)
        kth = ordered.gather(1, (top_k - 1)[:, None])
        ordered = ordered.masked_fill(ordered < kth, float("-inf"))  # top-k first, then top-p over what is left
        probs = ordered.softmax(-1)
        # rows without top-p drop nothing by it (a float32 cumsum reaches 1 before the vocabulary's end)
        drop = ((probs.cumsum(-1) - probs >= top_p[:, None]) & (top_p[:, None] < 1.0)) | (ordered == float("-inf"))
        drop[:, 0] = False  # the likeliest token always stays
        scaled = scaled.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))
    probs = scaled.softmax(-1)
    noise = torch.stack([torch.ones(vocab, device=device) if p.greedy
                         else torch.empty(vocab, device=device).exponential_(generator=g).clamp_(min=_FLOAT32.tiny)
                         for p, g in zip(params, generators, strict=True)])
    return torch.log(probs), (probs / noise).argmax(-1)


def _top(logprobs: torch.Tensor, k: int) -> list[tuple[int, float]]:
    if not k:
        return []
    values, ids = torch.topk(logprobs, min(k, logprobs.shape[-1]))
    return [(i, v) for i, v in zip(ids.tolist(), values.tolist(), strict=True) if v != float("-inf")]
