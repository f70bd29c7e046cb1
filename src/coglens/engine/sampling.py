"""Pure functions from logits to the next token, testable without a model."""

from __future__ import annotations

import torch

from .params import SamplingParams


def apply_penalties(logits: torch.Tensor, params: SamplingParams, prompt_ids: torch.Tensor,
                    generated: list[int]) -> torch.Tensor:
    """Repetition penalty as transformers applies it (over prompt and output); presence and frequency
    penalties as OpenAI defines them (over the output only)."""
    if params.repetition_penalty != 1.0:
        seen = torch.cat([prompt_ids.to(logits.device), torch.tensor(generated, dtype=torch.long,
                                                                     device=logits.device)]).unique()
        scores = logits[seen]
        logits[seen] = torch.where(scores < 0, scores * params.repetition_penalty,
                                   scores / params.repetition_penalty)
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
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, params: SamplingParams, prompt_ids: torch.Tensor, generated: list[int],
                generator: torch.Generator | None) -> tuple[int, float]:
    """(1-D vocab logits) -> (token id, its log-probability under the distribution it was drawn from)."""
    logits = apply_penalties(logits.float().clone(), params, prompt_ids, generated)
    if params.greedy:
        token = int(torch.argmax(logits))
        return token, float(torch.log_softmax(logits, -1)[token])
    logits = filter_top_k_top_p(logits / params.temperature, params.top_k, params.top_p)
    probs = logits.softmax(-1)
    token = int(torch.multinomial(probs, 1, generator=generator))
    return token, float(torch.log(probs[token]))
