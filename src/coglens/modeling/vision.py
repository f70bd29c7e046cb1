"""EVA2-CLIP vision tower of CogVLM, with the GLU adapter that maps patches into the LM's embedding space.

Module and parameter names follow THUDM's checkpoints (``model.vision.transformer.layers.N.attention...``) so that
checkpoints load without renaming and interpretability configs address the same paths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .attention import attention_function
from .configuration_cogvlm import CogvlmConfig, CogvlmVisionConfig


class PatchEmbedding(nn.Module):
    def __init__(self, config: CogvlmVisionConfig) -> None:
        super().__init__()
        p = config.patch_size
        self.proj = nn.Conv2d(config.in_channels, config.hidden_size, kernel_size=p, stride=p)
        self.cls_embedding = nn.Parameter(torch.zeros(1, config.hidden_size))
        # a fixed table, no interpolation: the checkpoint fixes the image size
        self.position_embedding = nn.Embedding(config.num_positions, config.hidden_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.proj(images).flatten(2).transpose(1, 2)  # (B, grid*grid, H), row-major patches
        cls = self.cls_embedding.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1)
        # called as a module (not .weight) so accelerate's offload hooks can load the table on demand
        return x + self.position_embedding(torch.arange(x.shape[1], device=x.device)).unsqueeze(0)


class Attention(nn.Module):
    def __init__(self, config: CogvlmVisionConfig) -> None:
        super().__init__()
        self.config = config  # read at call time: attn_implementation can change after construction
        self.num_heads = config.num_heads
        self.head_dim = config.hidden_size // config.num_heads
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor, attentions: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``attentions``: a list that collects this layer's weights (B, heads, N, N), computed eagerly."""
        b, n, _ = x.shape
        # fused layout is all-q | all-k | all-v; heads are split after that
        qkv = self.query_key_value(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attend = attention_function(self.config._attn_implementation, need_weights=attentions is not None)
        out, weights = attend(qkv[0], qkv[1], qkv[2], None, causal=False)  # (B, heads, N, D), no mask
        if attentions is not None:
            attentions.append(weights)
        return self.dense(out.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, config: CogvlmVisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU


class EVA2CLIPTransformerLayer(GradientCheckpointingLayer):
    """Post-norm on each branch: ``x + LN(attn(x))`` then ``x + LN(mlp(x))`` (not the usual pre-norm)."""

    def __init__(self, config: CogvlmVisionConfig) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = Attention(config)
        self.mlp = MLP(config)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, attentions: list[torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.input_layernorm(self.attention(x, attentions))
        return x + self.post_attention_layernorm(self.mlp(x))


class Transformer(nn.Module):
    def __init__(self, config: CogvlmVisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EVA2CLIPTransformerLayer(config) for _ in range(config.num_hidden_layers))

    def forward(
        self, x: torch.Tensor, hidden_states: list[torch.Tensor] | None = None,
        attentions: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``hidden_states`` / ``attentions``: lists that collect the embeddings and every layer's output / weights."""
        for layer in self.layers:
            if hidden_states is not None:
                hidden_states.append(x)
            x = layer(x, attentions)
        if hidden_states is not None:
            hidden_states.append(x)
        return x


class GLU(nn.Module):
    """Adapter into the LM space. Its LayerNorm keeps PyTorch's default eps 1e-5, not the ViT's 1e-6."""

    def __init__(self, config: CogvlmConfig, in_features: int) -> None:
        super().__init__()
        self.linear_proj = nn.Linear(in_features, config.hidden_size, bias=False)
        self.norm1 = nn.LayerNorm(config.hidden_size)
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.dense_4h_to_h = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(self.linear_proj(x)))
        return self.dense_4h_to_h(F.silu(self.gate_proj(x)) * self.dense_h_to_4h(x))


class EVA2CLIPModel(nn.Module):
    """Images (B, 3, S, S) -> LM-space features (B, num_image_tokens, hidden) framed by learned boi/eoi."""

    def __init__(self, config: CogvlmConfig) -> None:
        super().__init__()
        vision = config.vision_config
        self.patch_embedding = PatchEmbedding(vision)
        self.transformer = Transformer(vision)
        self.linear_proj = GLU(config, in_features=vision.hidden_size)
        # CogVLM2 halves the grid with a 2x2 stride-2 conv before the adapter
        self.conv = nn.Conv2d(vision.hidden_size, vision.hidden_size, 2, stride=2) if config.has_vision_conv else None
        self.boi = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.eoi = nn.Parameter(torch.zeros(1, 1, config.hidden_size))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(self.transformer(self.patch_embedding(images)))

    def project(self, vit_output: torch.Tensor) -> torch.Tensor:
        """ViT output (B, 1 + patches, H_v) -> LM-space features (B, num_image_tokens, hidden)."""
        x = vit_output[:, 1:]  # drop CLS
        if self.conv is not None:
            b, n, h = x.shape
            grid = int(n**0.5)
            x = self.conv(x.view(b, grid, grid, h).permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        x = self.linear_proj(x)
        b = x.shape[0]
        return torch.cat((self.boi.expand(b, -1, -1), x, self.eoi.expand(b, -1, -1)), dim=1)
