"""Real-size memory arithmetic (coglens.modeling.sizes) against real modules, real checkpoints and the libraries."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
import torch
from testkit import load_parity_model, parity_folder
from torch import nn

from coglens import Cogvlm2Config, CogvlmConfig, CogvlmForCausalLM
from coglens.modeling.sizes import (
    GIB,
    REAL_MODELS,
    ModelDims,
    components,
    parameter_count,
    planning_rows,
    quantized_linear_bytes,
    stored_bytes,
    weight_bytes,
)

# THUDM's cogvlm2-llama3-chat-19B/config.json as released (the keys that fix shapes)
COGVLM2_19B_CONFIG = {
    "vision_config": {"in_channels": 3, "num_hidden_layers": 63, "hidden_size": 1792, "patch_size": 14,
                      "num_heads": 16, "intermediate_size": 15360, "layer_norm_eps": 1e-06, "num_positions": 9217,
                      "image_size": 1344},
    "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "max_position_embeddings": 8192,
    "vocab_size": 128256, "num_hidden_layers": 32, "num_multi_query_heads": 8,
}
# ...and its model.safetensors.index.json: bf16 weights plus 32 stored rotary tables of 64 bf16 values
COGVLM2_19B_INDEX_TOTAL_SIZE = 39006214656


def _owner(name: str, parts) -> list[str]:
    return [c.name for c in parts if name.startswith(c.prefixes)]


@pytest.mark.parametrize("variant", ["cogvlm", "cogvlm2", "cogvlm2-video"])
def test_tiny_counts_equal_the_loaded_models_parameters(variant):
    model = load_parity_model(variant)
    dims = ModelDims.from_config(model.config)
    parts = components(dims)
    assert parameter_count(dims) == sum(p.numel() for p in model.parameters())
    found = Counter()
    linears = {c.name: Counter() for c in parts}
    for name, p in model.named_parameters():
        owners = _owner(name, parts)
        assert len(owners) == 1, f"{name} belongs to {owners}"
        found[owners[0]] += p.numel()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            linears[_owner(name + ".", parts)[0]][tuple(module.weight.shape)] += 1
    for c in parts:
        assert found[c.name] == c.params, c.name
        expected = Counter()
        for count, out, inp in c.linears:
            expected[(out, inp)] += count
        assert linears[c.name] == expected, c.name  # the quantizable weights are exactly the nn.Linear ones


@pytest.mark.parametrize(("name", "config"), [
    ("CogVLM-17B", CogvlmConfig()),  # CogvlmConfig's defaults are cogvlm-chat-hf's config.json
    ("CogVLM2-19B", Cogvlm2Config(**COGVLM2_19B_CONFIG)),
])
def test_real_sizes_equal_the_real_modules_built_on_meta(name, config):
    assert ModelDims.from_config(config) == REAL_MODELS[name]
    with torch.device("meta"):
        model = CogvlmForCausalLM(config)
    assert parameter_count(REAL_MODELS[name]) == sum(p.numel() for p in model.parameters())


def test_real_totals_match_the_released_checkpoints():
    cogvlm2 = REAL_MODELS["CogVLM2-19B"]
    rotary_tables = cogvlm2.num_hidden_layers * cogvlm2.head_dim // 2 * 2
    assert weight_bytes(cogvlm2, "bf16") + rotary_tables == COGVLM2_19B_INDEX_TOTAL_SIZE
    assert parameter_count(REAL_MODELS["CogVLM-17B"]) == pytest.approx(17.6e9, rel=0.005)  # "about 17.6 B"
    assert weight_bytes(REAL_MODELS["CogVLM-17B"], "bf16") == pytest.approx(35e9, rel=0.01)  # "35 GB in bf16"


def _bnb_4bit(quant_type: str, double_quant: bool, out: int, inp: int) -> nn.Module:
    bnb = pytest.importorskip("bitsandbytes")
    layer = bnb.nn.Linear4bit(inp, out, bias=False, compress_statistics=double_quant, quant_type=quant_type)
    layer.weight = bnb.nn.Params4bit(torch.randn(out, inp), requires_grad=False, compress_statistics=double_quant,
                                     quant_type=quant_type)
    return layer.to("cpu")  # quantizes


def _stored_bytes(layer: nn.Module) -> int:
    """Tensor bytes of the state dict, less bitsandbytes' serialised QuantState header (metadata, not weights)."""
    return sum(t.numel() * t.element_size() for k, t in layer.state_dict().items() if ".quant_state." not in k)


@pytest.mark.parametrize(("quant_type", "double_quant"), [("nf4", False), ("nf4", True), ("fp4", False)])
def test_4bit_bytes_equal_what_bitsandbytes_stores(quant_type, double_quant):
    for out, inp in ((384, 256), (100, 70)):  # 70 * 100 is not a multiple of the block size
        layer = _bnb_4bit(quant_type, double_quant, out, inp)
        assert _stored_bytes(layer) == quantized_linear_bytes(quant_type, out, inp, double_quant=double_quant)


def test_int8_bytes_equal_what_the_libraries_store():
    bnb = pytest.importorskip("bitsandbytes")
    layer = bnb.nn.Linear8bitLt(256, 384, bias=False, has_fp16_weights=False)
    layer.weight = bnb.nn.Int8Params(torch.randn(384, 256), requires_grad=False, has_fp16_weights=False)
    layer = layer.to("cpu")
    stored = sum(t.numel() * t.element_size() for k, t in layer.state_dict().items() if k != "weight_format")
    assert stored == quantized_linear_bytes("int8", 384, 256)
    quantization = pytest.importorskip("torchao.quantization")
    linear = nn.Sequential(nn.Linear(256, 384, bias=False)).to(torch.bfloat16)
    quantization.quantize_(linear, quantization.Int8WeightOnlyConfig())
    weight = linear[0].weight
    stored = sum(getattr(weight, n).numel() * getattr(weight, n).element_size()
                 for n in weight.__tensor_flatten__()[0])
    assert stored == quantized_linear_bytes("int8", 384, 256, int8_library="torchao")


def test_int4_bytes_by_hand():
    # torchao int4 needs a CUDA kernel library, so by hand: 4 bits a weight, bf16 scale + zero per 128-group
    assert quantized_linear_bytes("int4", 384, 256) == 384 * 256 // 2 + 384 * 2 * (2 + 2)
    assert quantized_linear_bytes("int4", 10, 130) == 650 + 10 * 2 * 4  # a partial group still has its constants


def test_scheme_totals_by_hand():
    dims = REAL_MODELS["CogVLM2-19B"]
    params = parameter_count(dims)
    assert weight_bytes(dims, "fp32") == 4 * params
    decoder = components(dims)[0]
    lm_linears = sum(n * o * i for n, o, i in decoder.linears)
    rows = sum(n * o for n, o, _ in decoder.linears)
    # int8 with the default skip list: decoder linears at 1 byte + 4-byte row scales, everything else bf16
    assert weight_bytes(dims, "int8") == lm_linears + 4 * rows + 2 * (params - lm_linears)
    assert weight_bytes(dims, "int8", compute_bytes=4, int8_library="torchao") == (
        lm_linears + 5 * rows + 4 * (params - lm_linears))
    everything = weight_bytes(dims, "int8", quantize_vision=True)
    assert everything < weight_bytes(dims, "int8") < weight_bytes(dims, "bf16")
    # double quantization shrinks the constants from 4 bytes to just over 1 per 64 weights
    saved = weight_bytes(dims, "nf4", double_quant=False) - weight_bytes(dims, "nf4")
    assert saved == pytest.approx(3 / 64 * lm_linears, rel=0.01)
    with pytest.raises(ValueError, match="unknown scheme 'int3'"):
        weight_bytes(dims, "int3")


def test_nf4_cogvlm2_fits_a_24_gb_gpu_and_bf16_does_not():
    fits = {(r["model"], r["scheme"], r["quantized"]): r["fits"] for r in planning_rows()}
    assert fits[("CogVLM2-19B", "nf4", "LM only")][24]
    assert not fits[("CogVLM2-19B", "bf16", "-")][24]
    assert fits[("CogVLM2-19B", "bf16", "-")][80]
    assert not fits[("CogVLM2-19B", "fp32", "-")][24]


def test_module_prints_the_table_without_importing_torch():
    code = ("import sys, runpy; sys.argv = ['sizes']; runpy.run_module('coglens.modeling.sizes', "
            "run_name='__main__'); print(json.dumps('torch' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                         check=True).stdout
    assert "CogVLM2-19B: 19,503,105,280 parameters" in out
    assert "| CogVLM2-19B | nf4 | LM only |" in out
    assert json.loads(out.strip().splitlines()[-1]) is False
    assert f"{weight_bytes(REAL_MODELS['CogVLM-17B'], 'bf16') / GIB:.2f}" in out


@pytest.mark.parametrize(("scheme", "dtype", "quantize_vision"), [
    ("int8", torch.bfloat16, False), ("int8", torch.float32, True), ("nf4", torch.float32, False),
    ("nf4", torch.bfloat16, True),
])
def test_bytes_equal_a_model_loaded_quantized(scheme, dtype, quantize_vision):
    """CogLens's CPU loading (torchao int8, bitsandbytes nf4 with double quantization) holds what sizes predicts."""
    pytest.importorskip({"int8": "torchao", "nf4": "bitsandbytes"}[scheme])
    from coglens.modeling.quantization import quantization_config

    folder = parity_folder("cogvlm2")
    model = CogvlmForCausalLM.from_pretrained(folder, torch_dtype=dtype, quantization_config=quantization_config(
        scheme, device="cpu", quantize_vision=quantize_vision))
    dims = ModelDims.from_config(model.config)
    rotary_tables = dims.num_hidden_layers * dims.head_dim // 2 * 4  # float32 buffers
    predicted = weight_bytes(dims, scheme, quantize_vision=quantize_vision, int8_library="torchao",
                             compute_bytes=dtype.itemsize)
    assert stored_bytes(model) == predicted + rotary_tables
