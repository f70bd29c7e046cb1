"""The Llama-style decoder of CogVLM with visual experts: separate QKV/dense/MLP weights for image tokens.

Numerics follow THUDM's code where it differs from plain Llama: RMSNorm multiplies by its weight in float32
before the single cast back, rotary angles come from a float32 table built from integer positions, and the
fused QKV is laid out [all query heads | KV heads for K | KV heads for V].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer

from .attention import attention_function
from .configuration_cogvlm import COGVLM, CogvlmConfig


class CogvlmRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * x32).to(x.dtype)  # weight times the float32 value, then one cast


class RotaryEmbedding(nn.Module):
    """NeoX half-split rotary. ``inv_freq`` stays float32 whatever dtype the model is cast to.

    THUDM's bf16 code builds its angle table from bf16 positions (positions above 256 get rounded); we always
    compute angles in float32 from integer positions, which is what the float32 model computes. The table is a
    checkpoint key (``rotary_emb.inv_freq``, as THUDM stores it): a stored table is used as stored.
    """

    def __init__(self, head_dim: int, base: float) -> None:
        super().__init__()
        self.head_dim, self.base = head_dim, base
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=True)

    def compute_inv_freq(self, device: torch.device | str | None = None) -> torch.Tensor:
        steps = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device)
        return 1.0 / (self.base ** (steps / self.head_dim))

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        keep = self.inv_freq.float()  # dtype casts of the model never round the table
        super()._apply(fn, recurse)
        if not keep.is_meta and not self.inv_freq.is_meta:
            self.inv_freq = keep.to(self.inv_freq.device)
        return self

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) integer positions -> cos, sin of shape (B, 1, L, head_dim/2), float32."""
        angles = position_ids.to(torch.float32).unsqueeze(-1) * self.inv_freq.to(position_ids.device)
        return angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x0, x1 = x.float().chunk(2, dim=-1)
    return torch.cat((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).to(x.dtype)


def route(
    x: torch.Tensor, vision_mask: torch.Tensor | None, language: nn.Module, vision: nn.Module | None, out_dim: int
) -> torch.Tensor:
    """Apply ``vision`` to the vision-expert positions and ``language`` to the rest.

    Only the selected rows go through each expert. The caller passes ``vision_mask=None`` for a step without
    vision tokens (every decode step), which then never touches the vision weights.
    """
    if vision is None or vision_mask is None:
        return language(x)
    out = x.new_empty(*x.shape[:-1], out_dim)
    out[vision_mask] = vision(x[vision_mask])
    lang = ~vision_mask
    if bool(lang.any()):
        out[lang] = language(x[lang])
    return out


class VisionExpertAttention(nn.Module):
    def __init__(self, config: CogvlmConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config  # read at call time: attn_implementation can change after construction
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.qkv_size = config.hidden_size + 2 * self.num_kv_heads * self.head_dim
        hidden = config.hidden_size
        self.rotary_emb = RotaryEmbedding(self.head_dim, config.rope_theta)
        if config.has_vision_experts:
            # CogVLM2's vision expert QKV has a bias, CogVLM-1's has none
            self.vision_expert_query_key_value = nn.Linear(hidden, self.qkv_size, bias=config.variant != COGVLM)
            self.vision_expert_dense = nn.Linear(hidden, hidden, bias=False)
        else:
            self.vision_expert_query_key_value = self.vision_expert_dense = None
        self.language_expert_query_key_value = nn.Linear(hidden, self.qkv_size, bias=False)
        self.language_expert_dense = nn.Linear(hidden, hidden, bias=False)

    def project(
        self, hidden_states: torch.Tensor, vision_mask: torch.Tensor | None, position_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Routed QKV projection with rotary applied: q (B, H, L, D), k and v (B, KV heads, L, D).

        A method of its own so that lenses (``coglens explain``) can recompute the attention weights, which
        SDPA does not return.
        """
        b, n, hidden = hidden_states.shape
        qkv = route(hidden_states, vision_mask, self.language_expert_query_key_value,
                    self.vision_expert_query_key_value, self.qkv_size)
        kv_size = self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([hidden, kv_size, kv_size], dim=-1)
        q = q.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, D)
        k = k.view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.rotary_emb(position_ids)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def forward(
        self,
        hidden_states: torch.Tensor,
        vision_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        past_key_values: Cache | None,
        attentions: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``attentions``: a list that collects this layer's weights (B, H, Lq, Lk), computed eagerly."""
        b, n, hidden = hidden_states.shape
        q, k, v = self.project(hidden_states, vision_mask, position_ids)
        if past_key_values is not None:
            # the cache holds keys after rotary and before the GQA expansion
            k, v = past_key_values.update(k, v, self.layer_idx)
        attend = attention_function(self.config._attn_implementation, need_weights=attentions is not None)
        out, weights = attend(q, k, v, attention_mask, causal=True)
        if attentions is not None:
            attentions.append(weights)
        out = out.transpose(1, 2).reshape(b, n, hidden)
        return route(out, vision_mask, self.language_expert_dense, self.vision_expert_dense, hidden)


class GatedMLP(nn.Module):
    def __init__(self, config: CogvlmConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class VisionExpertMLP(nn.Module):
    def __init__(self, config: CogvlmConfig) -> None:
        super().__init__()
        self.language_mlp = GatedMLP(config)
        self.vision_mlp = GatedMLP(config) if config.has_vision_experts else None
        self.hidden_size = config.hidden_size

    def forward(self, x: torch.Tensor, vision_mask: torch.Tensor | None) -> torch.Tensor:
        return route(x, vision_mask, self.language_mlp, self.vision_mlp, self.hidden_size)


class CogvlmDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm decoder layer. Returns the hidden state (a tensor, not a tuple): the cache updates in place.

    A ``GradientCheckpointingLayer``, so ``gradient_checkpointing_enable()`` recomputes it in the backward pass; the
    model then runs without a cache (a replayed layer would write it twice).
    """

    def __init__(self, config: CogvlmConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = CogvlmRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = VisionExpertAttention(config, layer_idx)
        self.post_attention_layernorm = CogvlmRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = VisionExpertMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        vision_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        past_key_values: Cache | None,
        attentions: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        h = hidden_states + self.self_attn(
            self.input_layernorm(hidden_states), vision_mask, position_ids, attention_mask, past_key_values,
            attentions,
        )
        return h + self.mlp(self.post_attention_layernorm(h), vision_mask)
