"""``coglens explain``: the heat map holds the attention probabilities, recomputed here by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from coglens.cli.main import app
from coglens.engine import SamplingParams
from coglens.lens.interpret.attention import ExplainInputError, image_attention, parse_selection
from coglens.lens.interpret.heatmap import attention_overlay, colormap
from coglens.pipeline import Pipeline


@pytest.fixture(scope="module")
def pipe(tiny_pipelines) -> Pipeline:
    return tiny_pipelines("cogvlm2", device=None)


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    pixels = np.zeros((60, 90, 3), dtype=np.uint8)
    pixels[:, :45] = (230, 40, 40)
    pixels[20:50, 30:70] = (250, 250, 30)
    return Image.fromarray(pixels)


def hand_attention(pipe: Pipeline, ids: torch.Tensor, types: torch.Tensor, images: list, layer: int,
                   head: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) of one layer and head, from that layer's input, written out step by step."""
    model = pipe.model
    captured = {}

    def keep_input(module: torch.nn.Module, args: tuple) -> None:
        captured["hidden"] = args[0]

    handle = model.model.layers[layer].register_forward_pre_hook(keep_input)
    with torch.inference_mode():
        model(input_ids=ids.view(1, -1), token_type_ids=types.view(1, -1), images=[images], use_cache=False)
    handle.remove()
    attn = model.model.layers[layer].self_attn
    norm = model.model.layers[layer].input_layernorm
    x = captured["hidden"][0].float()
    x = norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps))
    n = x.shape[0]
    is_vision = types == 1
    vision_expert = torch.zeros(n, dtype=torch.bool)
    vision_expert[:-1] = is_vision[:-1] & is_vision[1:]  # vision-typed and followed by a vision-typed token
    experts = (attn.language_expert_query_key_value, attn.vision_expert_query_key_value)
    qkv = torch.stack([experts[int(vision_expert[i])](x[i]) for i in range(n)])
    d, kv_group = attn.head_dim, head // (attn.num_heads // attn.num_kv_heads)
    q = qkv[:, head * d:(head + 1) * d]
    k_start = attn.num_heads * d + kv_group * d
    k = qkv[:, k_start:k_start + d]
    # positions: 0, 1, ... with the inner tokens of the image span (all but its first and last) sharing one
    positions, p = [], -1
    for i in range(n):
        inner = bool(is_vision[i] and is_vision[i - 1] and i + 1 < n and is_vision[i + 1])
        p += 0 if inner and bool(is_vision[i - 2]) else 1  # a later inner token repeats the first one's
        positions.append(p)
    angles = torch.tensor(positions, dtype=torch.float32).view(-1, 1) * attn.rotary_emb.inv_freq.view(1, -1)
    cos, sin = angles.cos(), angles.sin()

    def rotate(t: torch.Tensor) -> torch.Tensor:
        a, b = t[:, : d // 2], t[:, d // 2:]
        return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)

    scores = (rotate(q) @ rotate(k).T / math.sqrt(d)).detach()
    scores = scores.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1), float("-inf"))
    return scores.softmax(dim=-1)


def test_heat_map_values_are_the_attention_probabilities(pipe, picture):
    layer, head = 1, 1
    result = image_attention(pipe, picture, "What is in the image?", layers=[layer], heads=[head],
                             params=SamplingParams(max_new_tokens=6))
    inputs = pipe.build_inputs("What is in the image?", images=[picture])
    prompt_len = inputs["input_ids"].numel()
    answer = torch.tensor(result.answer_token_ids[:-1], dtype=torch.long)
    ids = torch.cat((inputs["input_ids"], answer))
    types = torch.cat((inputs["token_type_ids"], torch.zeros_like(answer)))
    probs = hand_attention(pipe, ids, types, list(inputs["images"]), layer, head)

    vision = (inputs["token_type_ids"] == 1).nonzero().flatten()
    patches = vision[1:-1]  # without boi and eoi
    rows = probs[prompt_len - 1:]  # the rows that produced the answer tokens
    expected = rows[:, patches].mean(dim=0).reshape(2, 2).numpy()
    assert len(result.answer_token_ids) == 6
    assert result.grid.shape == (2, 2)  # CogVLM2: the 4x4 patch grid after the 2x2 conv
    np.testing.assert_allclose(result.grid, expected, rtol=1e-4, atol=1e-6)
    assert 0 < result.image_share < 1


def test_averaging_over_layers_and_heads(pipe, picture):
    params = SamplingParams(max_new_tokens=4)
    everything = image_attention(pipe, picture, "Describe it.", params=params)
    singles = [
        image_attention(pipe, picture, "Describe it.", layers=[layer], heads=[head], params=params).grid
        for layer in range(2) for head in range(pipe.config.num_attention_heads)
    ]
    np.testing.assert_allclose(everything.grid, np.mean(singles, axis=0), rtol=1e-5, atol=1e-7)
    assert everything.per_layer_head.shape == (2, pipe.config.num_attention_heads, 4)


def test_png_has_the_size_of_the_image(picture, tmp_path):
    image_path = tmp_path / "picture.png"
    picture.save(image_path)
    out = tmp_path / "attention.png"
    result = CliRunner().invoke(app, ["explain", "--image", str(image_path), "--out", str(out),
                                      "--layers", "0,-1", "--heads", "all", "--model", "tiny:cogvlm2",
                                      "What is it?"])
    assert result.exit_code == 0, result.output
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == picture.size


def test_overlay_and_colormap():
    grid = np.array([[0.0, 0.1], [0.2, 0.4]])
    image = Image.new("RGB", (40, 30), (255, 255, 255))
    assert attention_overlay(image, grid, alpha=1.0).getpixel((39, 29)) == tuple(colormap(np.array(1.0)))
    assert attention_overlay(image, grid, alpha=0.0).getpixel((0, 0)) == (255, 255, 255)
    assert tuple(colormap(np.array(0.0))) == (0, 0, 4)
    assert colormap(np.zeros((3, 5))).shape == (3, 5, 3)


def test_layer_and_head_selection():
    assert parse_selection("all", 4, "head") is None
    assert parse_selection("0, 2,-1", 4, "head") == [0, 2, 3]
    with pytest.raises(ExplainInputError, match="layer 7 does not exist"):
        parse_selection("7", 2, "layer")
    with pytest.raises(ExplainInputError, match="comma-separated"):
        parse_selection("first", 2, "layer")
