"""The CogVLM family on vLLM's engine: the decoder with visual experts over paged attention, tensor parallel.

Every computation that decides the numbers is CogLens's own: the vision tower and GLU adapter
(:class:`~coglens.modeling.vision.EVA2CLIPModel`, replicated on each rank), RMSNorm, rotary and the
routing rule (:mod:`coglens.modeling.routing`). vLLM contributes the paged KV cache, its attention kernels and the
tensor-parallel linear layers; the expert weights are sharded like any Llama's (QKV by heads, MLP by columns).

Positions come from :meth:`CogvlmForVllm.get_mrope_input_positions` (see :mod:`coglens.vllm_plugin.config`):
row 0 is CogVLM's compressed position, row 1 minus row 0 the vision-expert flag.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from vllm.config import CUDAGraphMode, VllmConfig
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import SupportsMRoPE, SupportsMultiModal
from vllm.multimodal import MULTIMODAL_REGISTRY

from coglens.modeling.configuration_cogvlm import COGVLM, CogvlmConfig
from coglens.modeling.language import CogvlmRMSNorm, RotaryEmbedding, apply_rotary
from coglens.modeling.routing import LANGUAGE_TOKEN_TYPE, VISION_TOKEN_TYPE, build_position_ids, vision_expert_mask
from coglens.modeling.vision import EVA2CLIPModel
from coglens.vllm_plugin.inputs import CogvlmDummyInputsBuilder, CogvlmMultiModalProcessor, CogvlmProcessingInfo

# checkpoint name piece -> (our fused parameter, shard index)
_MLP_SHARDS = {"gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}


def _routed(x: torch.Tensor, vision_mask: torch.Tensor | None, language: nn.Module, vision: nn.Module | None):
    """``vision`` on the vision-expert rows, ``language`` on the rest (vLLM's linears return (out, bias))."""
    if vision is None or vision_mask is None:
        return language(x)[0]
    vision_out = vision(x[vision_mask])[0]
    out = vision_out.new_empty(x.shape[0], vision_out.shape[-1])
    out[vision_mask] = vision_out
    language_rows = ~vision_mask
    if bool(language_rows.any()):
        out[language_rows] = language(x[language_rows])[0]
    return out


class ExpertAttention(nn.Module):
    def __init__(self, config: CogvlmConfig, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        tp = get_tensor_model_parallel_world_size()
        heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        if heads % tp or (kv_heads % tp and tp % kv_heads):
            raise ValueError(f"tensor parallel size {tp} does not divide {heads} attention heads / {kv_heads} KV heads")
        self.num_heads, self.num_kv_heads, self.head_dim = heads // tp, max(1, kv_heads // tp), head_dim
        quant = vllm_config.quant_config

        def qkv(name: str, bias: bool) -> QKVParallelLinear:
            return QKVParallelLinear(config.hidden_size, head_dim, heads, kv_heads, bias=bias, quant_config=quant,
                                     prefix=f"{prefix}.{name}")

        def dense(name: str) -> RowParallelLinear:
            return RowParallelLinear(config.hidden_size, config.hidden_size, bias=False, quant_config=quant,
                                     prefix=f"{prefix}.{name}")

        self.language_expert_query_key_value = qkv("language_expert_query_key_value", False)
        self.language_expert_dense = dense("language_expert_dense")
        if config.has_vision_experts:  # CogVLM2's vision expert QKV has a bias, CogVLM-1's has none
            self.vision_expert_query_key_value = qkv("vision_expert_query_key_value", config.variant != COGVLM)
            self.vision_expert_dense = dense("vision_expert_dense")
        else:
            self.vision_expert_query_key_value = self.vision_expert_dense = None
        self.rotary_emb = RotaryEmbedding(head_dim, config.rope_theta)
        self.attn = Attention(self.num_heads, head_dim, head_dim**-0.5, num_kv_heads=self.num_kv_heads,
                              cache_config=vllm_config.cache_config, quant_config=quant, prefix=f"{prefix}.attn")

    def forward(self, x: torch.Tensor, positions: torch.Tensor, vision_mask: torch.Tensor | None) -> torch.Tensor:
        qkv = _routed(x, vision_mask, self.language_expert_query_key_value, self.vision_expert_query_key_value)
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        cos, sin = self.rotary_emb(positions[None])  # (1, 1, N, D/2), float32 from integer positions
        q = apply_rotary(q.view(1, -1, self.num_heads, self.head_dim).transpose(1, 2), cos, sin)
        k = apply_rotary(k.view(1, -1, self.num_kv_heads, self.head_dim).transpose(1, 2), cos, sin)
        out = self.attn(q.transpose(1, 2).reshape(-1, q_size), k.transpose(1, 2).reshape(-1, kv_size), v)
        return _routed(out, vision_mask, self.language_expert_dense, self.vision_expert_dense)


class GatedMLP(nn.Module):
    def __init__(self, config: CogvlmConfig, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        quant = vllm_config.quant_config
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [config.intermediate_size] * 2,
                                                       bias=False, quant_config=quant, prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, bias=False,
                                           quant_config=quant, prefix=f"{prefix}.down_proj")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        gate, up = self.gate_up_proj(x)[0].chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)[0], None


class ExpertMLP(nn.Module):
    def __init__(self, config: CogvlmConfig, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        self.language_mlp = GatedMLP(config, vllm_config, f"{prefix}.language_mlp")
        self.vision_mlp = GatedMLP(config, vllm_config, f"{prefix}.vision_mlp") if config.has_vision_experts else None

    def forward(self, x: torch.Tensor, vision_mask: torch.Tensor | None) -> torch.Tensor:
        return _routed(x, vision_mask, self.language_mlp, self.vision_mlp)


class DecoderLayer(nn.Module):
    def __init__(self, config: CogvlmConfig, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        self.input_layernorm = CogvlmRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = ExpertAttention(config, vllm_config, f"{prefix}.self_attn")
        self.post_attention_layernorm = CogvlmRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = ExpertMLP(config, vllm_config, f"{prefix}.mlp")

    def forward(self, x: torch.Tensor, positions: torch.Tensor, vision_mask: torch.Tensor | None) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x), positions, vision_mask)
        return h + self.mlp(self.post_attention_layernorm(h), vision_mask)


class CogvlmModel(nn.Module):
    """``model.*`` of THUDM's checkpoints: embeddings, vision tower, decoder layers, final norm."""

    def __init__(self, config: CogvlmConfig, vllm_config: VllmConfig, prefix: str) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size,
                                                   prefix=f"{prefix}.embed_tokens")
        config.vision_config._attn_implementation = "sdpa"
        self.vision = EVA2CLIPModel(config)
        self.layers = nn.ModuleList(
            DecoderLayer(config, vllm_config, f"{prefix}.layers.{i}") for i in range(config.num_hidden_layers)
        )
        self.norm = CogvlmRMSNorm(config.hidden_size, config.rms_norm_eps)


@MULTIMODAL_REGISTRY.register_processor(CogvlmMultiModalProcessor, info=CogvlmProcessingInfo,
                                        dummy_inputs=CogvlmDummyInputsBuilder)
class CogvlmForVllm(nn.Module, SupportsMultiModal, SupportsMRoPE):
    """CogVLM-1, CogVLM2 and CogVLM2-Video (``CogVLMForCausalLM`` / ``CogVLMVideoForCausalLM``) for vLLM."""

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        return None  # the processor puts the span after bos itself; the chat text carries no marker

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        if vllm_config.compilation_config.cudagraph_mode != CUDAGraphMode.NONE:
            # which expert a token takes is decided per step from the data, which a captured graph cannot replay
            raise ValueError("CogVLM models run without CUDA graphs in vLLM: start it with --enforce-eager "
                             "(LLM(..., enforce_eager=True))")
        config = vllm_config.model_config.hf_config
        self.config = config
        self.model = CogvlmModel(config, vllm_config, "model")
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, prefix="lm_head")
        self.logits_processor = LogitsProcessor(config.vocab_size)

    # --- positions and routing ----------------------------------------------------------------------------

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features: list[Any]) -> tuple[torch.Tensor, int]:
        types = torch.full((1, len(input_tokens)), LANGUAGE_TOKEN_TYPE, dtype=torch.long)
        for feature in mm_features:
            place = feature.mm_position
            span = types[0, place.offset:place.offset + place.length]
            if place.is_embed is None:
                span.fill_(VISION_TOKEN_TYPE)
            else:
                span[place.is_embed.bool()] = VISION_TOKEN_TYPE
        positions = build_position_ids(types)[0]
        flags = vision_expert_mask(types)[0].long() if self.config.has_vision_experts else torch.zeros_like(positions)
        rows = torch.stack((positions, positions + flags, positions))
        return rows, int(positions.max()) + 1 - len(input_tokens) if len(input_tokens) else 0

    # --- inputs ---------------------------------------------------------------------------------------------

    def embed_multimodal(self, **kwargs: object) -> tuple[torch.Tensor, ...]:
        vision = self.model.vision
        dtype = vision.patch_embedding.proj.weight.dtype
        device = vision.patch_embedding.proj.weight.device
        if (images := kwargs.get("pixel_values")) is not None:
            batch = torch.stack(list(images)) if isinstance(images, (list, tuple)) else images
            return tuple(vision(batch.to(device=device, dtype=dtype)))
        if (clips := kwargs.get("video_pixel_values")) is not None:
            return tuple(vision(clip.to(device=device, dtype=dtype)).flatten(0, 1) for clip in clips)  # type: ignore[union-attr]
        return ()

    def embed_input_ids(
        self, input_ids: torch.Tensor, multimodal_embeddings: Any = None, *, is_multimodal: torch.Tensor | None = None,
    ) -> torch.Tensor:
        embeds = self.model.embed_tokens(input_ids)
        if multimodal_embeddings is not None and len(multimodal_embeddings) and is_multimodal is not None:
            features = torch.cat([m.reshape(-1, embeds.shape[-1]) for m in multimodal_embeddings])
            embeds[is_multimodal] = features.to(embeds.dtype)
        return embeds

    # --- forward --------------------------------------------------------------------------------------------

    def forward(
        self, input_ids: torch.Tensor | None, positions: torch.Tensor, intermediate_tensors: Any = None,
        inputs_embeds: torch.Tensor | None = None, **kwargs: object,
    ) -> torch.Tensor:
        h = inputs_embeds if inputs_embeds is not None else self.model.embed_tokens(input_ids)
        position, flagged = positions[0], positions[1]
        vision_mask = None
        if self.config.has_vision_experts:
            vision_mask = flagged != position
            vision_mask = vision_mask if bool(vision_mask.any()) else None
        for layer in self.model.layers:
            h = layer(h, position, vision_mask)
        return self.model.norm(h)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.logits_processor(self.lm_head, hidden_states)

    # --- weights --------------------------------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """THUDM's key names as released; the MLP's gate and up weights go into one sharded matrix."""
        params = dict(self.named_parameters())
        buffers = dict(self.named_buffers())
        loaded: set[str] = set()
        for name, tensor in weights:
            if name.endswith("rotary_emb.inv_freq"):  # a stored table is used as stored (as CogLens does)
                buffers[name].copy_(tensor.float())
                continue
            module_name, _, leaf = name.rpartition(".")
            parent, _, piece = module_name.rpartition(".")
            if piece in _MLP_SHARDS and parent.endswith("_mlp"):
                fused, shard = _MLP_SHARDS[piece]
                target = f"{parent}.{fused}.{leaf}"
                params[target].weight_loader(params[target], tensor, shard)
                loaded.add(target)
                continue
            if name not in params:
                raise KeyError(f"checkpoint weight {name!r} has no place in the CogVLM model for vLLM")
            param = params[name]
            getattr(param, "weight_loader", default_weight_loader)(param, tensor)
            loaded.add(name)
        return loaded
