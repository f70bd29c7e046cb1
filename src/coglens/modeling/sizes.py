"""Parameter counts and weight bytes of CogVLM models per quantization scheme, computed from config values alone.

Planning memory for the real checkpoints (17-19 B parameters) must not need the checkpoint, nor torch: this module
is plain arithmetic over a :class:`ModelDims` (read from a ``CogvlmConfig`` or written out, as
:data:`REAL_MODELS` is from THUDM's ``config.json`` files). Run ``python -m coglens.modeling.sizes`` for the table.

Byte counts follow what the libraries store for one ``nn.Linear`` weight (out x in), checked against them in
``tests/modeling/test_sizes.py``:

- int8 (bitsandbytes LLM.int8 / torchao int8 weight-only): 1 byte a weight + one float32 scale per output row
  (torchao adds a 1-byte zero point per row);
- nf4 / fp4 (bitsandbytes): 4 bits a weight + one float32 absmax per block of 64; with double quantization the
  absmax is itself 8-bit, with one float32 per 256 blocks and a 256-entry float32 code per tensor;
- int4 (torchao weight-only, group 128): 4 bits a weight + a bfloat16 scale and zero point per group of 128.

Only ``nn.Linear`` weights are quantized; embeddings, convolutions, norms, biases and learned vectors stay in the
compute dtype (bfloat16). By default the vision tower, the GLU adapter and ``lm_head`` stay unquantized too.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

GIB = 2**30
UNQUANTIZED_BYTES = {"fp32": 4, "bf16": 2}  # every parameter at this width
QUANTIZED_SCHEMES = ("int8", "int4", "nf4", "fp4")  # linears quantized, the rest bfloat16
SCHEMES = (*UNQUANTIZED_BYTES, *QUANTIZED_SCHEMES)
COMPUTE_BYTES = 2  # bfloat16: what the unquantized parts of a quantized model are kept in
BNB_BLOCK = 64  # bitsandbytes 4-bit block size (absmax granularity)
BNB_NESTED_BLOCK = 256  # double quantization: blocks of absmax values per float32 scale
TORCHAO_INT4_GROUP = 128  # torchao Int4WeightOnlyConfig's default group size
GPU_SIZES_GIB = (16, 24, 80)
RUNTIME_RESERVE_GIB = 1.5  # CUDA context, allocator slack, one layer's activations (1344 px ViT: ~0.3 GiB fc1)
PLANNING_TEXT_TOKENS = 2048  # KV cache planned for one image plus this many text tokens


@dataclass(frozen=True)
class ModelDims:
    """The config values that fix a CogVLM model's parameter shapes."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vision_experts: bool  # vision_expert_* attention and vision_mlp in every decoder layer (not CogVLM2-Video)
    vision_conv: bool  # the 2x2 stride-2 conv after the ViT (CogVLM2, Video)
    vision_qkv_bias: bool  # a bias on vision_expert_query_key_value (CogVLM2)
    image_size: int
    patch_size: int
    in_channels: int
    vision_hidden_size: int
    vision_intermediate_size: int
    vision_num_hidden_layers: int

    @classmethod
    def from_config(cls, config: Any) -> ModelDims:
        """From a :class:`~coglens.modeling.CogvlmConfig` (duck-typed, so this module never imports torch)."""
        v = config.vision_config
        return cls(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
            vision_experts=config.has_vision_experts, vision_conv=config.has_vision_conv,
            vision_qkv_bias=config.variant != "cogvlm",  # the rule modeling/language.py applies
            image_size=v.image_size, patch_size=v.patch_size, in_channels=v.in_channels,
            vision_hidden_size=v.hidden_size, vision_intermediate_size=v.intermediate_size,
            vision_num_hidden_layers=v.num_hidden_layers,
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_image_tokens(self) -> int:
        grid = self.image_size // self.patch_size // (2 if self.vision_conv else 1)
        return grid * grid + 2


# THUDM's config.json values: cogvlm-chat-hf (Vicuna-7B + EVA2-CLIP-E, 490 px) and cogvlm2-llama3-chat-19B
# (Llama-3-8B + EVA2-CLIP-E, 1344 px).
_EVA2_CLIP_E = dict(patch_size=14, in_channels=3, vision_hidden_size=1792, vision_intermediate_size=15360,
                    vision_num_hidden_layers=63)
REAL_MODELS: dict[str, ModelDims] = {
    "CogVLM-17B": ModelDims(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vision_experts=True, vision_conv=False, vision_qkv_bias=False, image_size=490,
        **_EVA2_CLIP_E,
    ),
    "CogVLM2-19B": ModelDims(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vision_experts=True, vision_conv=True, vision_qkv_bias=True, image_size=1344,
        **_EVA2_CLIP_E,
    ),
}


@dataclass(frozen=True)
class Component:
    """One part of the model: the ``nn.Linear`` weights a scheme may quantize and the parameters it never does.

    ``prefixes``: the module paths (as in ``named_parameters``) whose parameters make up the component.
    """

    name: str
    prefixes: tuple[str, ...]
    linears: tuple[tuple[int, int, int], ...]  # (count, out_features, in_features) of quantizable weights
    other: int  # embeddings, convs, norms, biases, learned vectors
    quantized_by_default: bool

    @property
    def params(self) -> int:
        return sum(n * o * i for n, o, i in self.linears) + self.other


def components(d: ModelDims) -> list[Component]:
    """The model split the way quantization treats it: decoder, embeddings, lm_head, vision tower, adapter."""
    h, inner, hv = d.hidden_size, d.intermediate_size, d.vision_hidden_size
    qkv = h + 2 * d.num_key_value_heads * d.head_dim  # [all query heads | K heads | V heads]
    experts = 2 if d.vision_experts else 1
    layers = d.num_hidden_layers
    decoder = Component(
        "decoder layers", ("model.layers.", "model.norm."),
        ((experts * layers, qkv, h), (experts * layers, h, h), (2 * experts * layers, inner, h),
         (experts * layers, h, inner)),
        other=layers * (2 * h + (qkv if d.vision_experts and d.vision_qkv_bias else 0)) + h,
        quantized_by_default=True,
    )
    grid = d.image_size // d.patch_size
    vit_layers = d.vision_num_hidden_layers
    tower = Component(
        "vision tower", ("model.vision.patch_embedding.", "model.vision.transformer.", "model.vision.conv."),
        ((vit_layers, 3 * hv, hv), (vit_layers, hv, hv), (vit_layers, d.vision_intermediate_size, hv),
         (vit_layers, hv, d.vision_intermediate_size)),
        # biases of the four linears + two affine LayerNorms per layer; patch conv, CLS, position table; 2x2 conv
        other=vit_layers * (3 * hv + hv + d.vision_intermediate_size + hv + 4 * hv)
        + hv * d.in_channels * d.patch_size**2 + hv + hv + (grid * grid + 1) * hv
        + (hv * hv * 4 + hv if d.vision_conv else 0),
        quantized_by_default=False,
    )
    adapter = Component(
        "GLU adapter", ("model.vision.linear_proj.", "model.vision.boi", "model.vision.eoi"),
        ((1, h, hv), (2, inner, h), (1, h, inner)),
        other=2 * h + 2 * h,  # norm1 weight and bias; boi and eoi
        quantized_by_default=False,
    )
    return [
        decoder,
        Component("embed_tokens", ("model.embed_tokens.",), (), d.vocab_size * h, quantized_by_default=False),
        Component("lm_head", ("lm_head.",), ((1, d.vocab_size, h),), 0, quantized_by_default=False),
        tower,
        adapter,
    ]


def parameter_count(d: ModelDims) -> int:
    return sum(c.params for c in components(d))


def quantized_linear_bytes(scheme: str, out_features: int, in_features: int, *, double_quant: bool = False,
                           int8_library: str = "bitsandbytes") -> int:
    """Bytes one quantized ``out x in`` weight takes, constants included (see the module docstring).

    ``int8_library``: CogLens runs int8 with bitsandbytes on CUDA and with torchao on a CPU.
    """
    n = out_features * in_features
    if scheme == "int8":
        per_row = 4 + (1 if int8_library == "torchao" else 0)  # float32 scale (+ int8 zero point in torchao)
        return n + per_row * out_features
    if scheme == "int4":
        groups = out_features * -(-in_features // TORCHAO_INT4_GROUP)
        return -(-n // 2) + 2 * COMPUTE_BYTES * groups
    if scheme in ("nf4", "fp4"):
        blocks = -(-n // BNB_BLOCK)
        code = 16 * 4  # the 16-value quantization map
        if double_quant:
            return -(-n // 2) + blocks + 4 * -(-blocks // BNB_NESTED_BLOCK) + 256 * 4 + code
        return -(-n // 2) + 4 * blocks + code
    raise ValueError(f"unknown scheme {scheme!r}; expected one of {SCHEMES}")


def weight_bytes(d: ModelDims, scheme: str, *, quantize_vision: bool = False, double_quant: bool = True,
                 compute_bytes: int = COMPUTE_BYTES, int8_library: str = "bitsandbytes") -> int:
    """Bytes of all parameters under ``scheme``; ``quantize_vision`` also quantizes tower, adapter and lm_head.

    Defaults are what CogLens loads on a GPU: nf4/fp4 with double quantization, int8 with bitsandbytes, the
    unquantized parts in bfloat16 (``compute_bytes``; 4 for a float32 model on a CPU).
    """
    if scheme in UNQUANTIZED_BYTES:
        return parameter_count(d) * UNQUANTIZED_BYTES[scheme]
    total = 0
    for c in components(d):
        total += c.other * compute_bytes
        for count, out, inp in c.linears:
            if c.quantized_by_default or quantize_vision:
                total += count * quantized_linear_bytes(scheme, out, inp, double_quant=double_quant,
                                                        int8_library=int8_library)
            else:
                total += count * out * inp * compute_bytes
    return total


def stored_bytes(model: Any) -> int:
    """Bytes of every tensor a loaded model holds: parameters, buffers and quantization constants; what
    :func:`weight_bytes` predicts (plus the rotary tables).

    Counts the plain tensors inside tensor subclasses (torchao) and bitsandbytes' absmax / code tensors, which the
    state dict lists; leaves out bitsandbytes' serialised QuantState header and weight-format flag (metadata).
    """
    def size(t: Any) -> int:
        if hasattr(t, "__tensor_flatten__"):
            return sum(size(getattr(t, name)) for name in t.__tensor_flatten__()[0])
        return t.numel() * t.element_size()

    return sum(size(t) for k, t in model.state_dict().items()
               if ".quant_state." not in k and not k.endswith("weight_format"))


def kv_cache_bytes(d: ModelDims, tokens: int) -> int:
    """bfloat16 keys and values of every layer for ``tokens`` positions (cached before the GQA expansion)."""
    return 2 * d.num_hidden_layers * d.num_key_value_heads * d.head_dim * COMPUTE_BYTES * tokens


def planning_rows(models: dict[str, ModelDims] | None = None) -> list[dict[str, Any]]:
    """One row per model x scheme x (default skip list | everything quantized): bytes and which GPUs fit it,
    with CogLens's GPU settings (see :func:`weight_bytes`).

    A GPU fits when weights + the KV cache of one image and :data:`PLANNING_TEXT_TOKENS` text tokens +
    :data:`RUNTIME_RESERVE_GIB` stay within its memory.
    """
    rows = []
    for name, d in (models or REAL_MODELS).items():
        kv = kv_cache_bytes(d, d.num_image_tokens + PLANNING_TEXT_TOKENS)
        variants = [(s, False) for s in UNQUANTIZED_BYTES] + [(s, v) for s in QUANTIZED_SCHEMES for v in (False, True)]
        for scheme, everything in variants:
            weights = weight_bytes(d, scheme, quantize_vision=everything)
            need = weights + kv + RUNTIME_RESERVE_GIB * GIB
            rows.append({
                "model": name, "params": parameter_count(d), "scheme": scheme,
                "quantized": "-" if scheme in UNQUANTIZED_BYTES else ("all linears" if everything else "LM only"),
                "weights_bytes": weights, "kv_bytes": kv,
                "fits": {gpu: need <= gpu * GIB for gpu in GPU_SIZES_GIB},
            })
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    gpus = " | ".join(f"{g} GB" for g in GPU_SIZES_GIB)
    lines = [f"| model | scheme | quantized | weights GiB | + KV GiB | {gpus} |",
             "|---|---|---|--:|--:|" + ":-:|" * len(GPU_SIZES_GIB)]
    for r in rows:
        fits = " | ".join("yes" if r["fits"][g] else "no" for g in GPU_SIZES_GIB)
        lines.append(f"| {r['model']} | {r['scheme']} | {r['quantized']} | {r['weights_bytes'] / GIB:.2f} | "
                     f"{r['kv_bytes'] / GIB:.2f} | {fits} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Weight memory of the real CogVLM checkpoints per scheme.")
    parser.parse_args(argv)
    for name, d in REAL_MODELS.items():
        parts = ", ".join(f"{c.name} {c.params / 1e9:.3f} B" for c in components(d))
        print(f"{name}: {parameter_count(d):,} parameters ({parts})")
    print(f"\nfits = weights + KV cache (one image + {PLANNING_TEXT_TOKENS} text tokens, bf16) + "
          f"{RUNTIME_RESERVE_GIB} GiB reserve <= GPU memory (GiB)\n")
    print(format_table(planning_rows()))


if __name__ == "__main__":
    main()
