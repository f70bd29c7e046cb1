"""Attention backends, chosen by ``config._attn_implementation`` (``"eager"`` or ``"sdpa"``) as in transformers.

``eager`` is the readable reference (and the only one that can return attention weights); ``sdpa`` is PyTorch's
fused kernel. Both take (B, H, Lq, D) queries and (B, KV heads, Lk, D) keys/values, so grouped-query attention
never copies the cache, and an additive (B, 1, Lq, Lk) bias or ``None`` for plain causal attention.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

AttentionFn = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


def causal_bias(q_len: int, k_len: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, 1, q, k) bias hiding future keys; the queries are the last ``q_len`` positions of ``k_len``."""
    future = torch.ones(q_len, k_len, dtype=torch.bool, device=device).triu(k_len - q_len + 1)
    return torch.zeros(q_len, k_len, dtype=dtype, device=device).masked_fill(future, torch.finfo(dtype).min)[None, None]


def eager_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, *, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d) + bias) v, softmax in float32. Returns the output and the weights (B, H, Lq, Lk)."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:  # GQA: KV head j serves query heads j*groups ... j*groups+groups-1
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if bias is None and causal and q.shape[2] > 1:
        bias = causal_bias(q.shape[2], k.shape[2], scores.dtype, scores.device)
    if bias is not None:
        scores = scores + bias
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, v), weights


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, *, causal: bool
) -> tuple[torch.Tensor, None]:
    gqa = k.shape[1] != q.shape[1]
    if bias is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal and q.shape[2] > 1, enable_gqa=gqa), None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=gqa), None


ATTENTION_FUNCTIONS: dict[str, AttentionFn] = {"eager": eager_attention, "sdpa": sdpa_attention}


def attention_function(implementation: str | None, need_weights: bool = False) -> AttentionFn:
    """The backend for ``implementation``; eager whenever weights are asked for (SDPA cannot return them)."""
    if need_weights:
        return eager_attention
    name = implementation or "sdpa"
    if name not in ATTENTION_FUNCTIONS:
        raise ValueError(
            f"attn_implementation={name!r} is not supported by CogVLM models; use one of {sorted(ATTENTION_FUNCTIONS)}"
        )
    return ATTENTION_FUNCTIONS[name]
