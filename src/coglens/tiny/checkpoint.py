"""Write a tiny random checkpoint folder laid out exactly like THUDM's releases, plus its tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from coglens.tiny.tokenizer import build_tokenizer, special_tokens_map, tokenizer_config
from coglens.tiny.variants import TinyVariant, get_tiny_variant
from coglens.tiny.weights import checkpoint_spec, random_state_dict

# Like the fixtures' sharded folders: the LM trunk in the first shard, vision tower, final norm and head in
# the second, so loaders are exercised on a real index without the tiny model needing a size threshold.
SHARD_NAMES = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
INDEX_NAME = "model.safetensors.index.json"
CHECKPOINT_FILES = frozenset({
    "config.json", "generation_config.json", INDEX_NAME, *SHARD_NAMES,
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
})


class TinyOutputDirError(FileExistsError):
    """The output folder holds files of something else; writing a checkpoint there would mix the two."""


class TinyDtypeError(ValueError):
    """A dtype that cannot hold weights (not a floating point type)."""


def write_tiny_checkpoint(
    variant: str, out_dir: str | Path, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Path:
    """Write ``variant``'s tiny checkpoint (random weights from ``seed``) and tokenizer into ``out_dir``.

    The same arguments always give byte-identical files. Rewriting a folder that holds only these files is
    allowed; a folder with anything else in it is refused.
    """
    spec = get_tiny_variant(variant)
    if not dtype.is_floating_point:
        raise TinyDtypeError(f"dtype must be a floating point torch dtype such as torch.bfloat16, got {dtype}")
    out = Path(out_dir)
    _check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer(spec.tokenizer)
    weights = random_state_dict(
        checkpoint_spec(spec, tokenizer.get_vocab_size()), rope_base=spec.rope_base, seed=seed, dtype=dtype
    )
    _write_shards(weights, out)
    _write_json(out / "config.json", model_config(spec, tokenizer, dtype))
    _write_json(out / "generation_config.json", generation_config(spec, tokenizer))
    tokenizer.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", tokenizer_config(spec.tokenizer, spec.language.max_position_embeddings))
    _write_json(out / "special_tokens_map.json", special_tokens_map(spec.tokenizer))
    return out


def model_config(spec: TinyVariant, tokenizer: Tokenizer, dtype: torch.dtype) -> dict[str, Any]:
    """``config.json`` with THUDM's fields, plus ``model_type`` and without ``auto_map`` (no remote code)."""
    lm, vision, layout = spec.language, spec.vision, spec.tokenizer
    config: dict[str, Any] = {
        "architectures": [spec.architecture],
        "model_type": spec.model_type,
        "bos_token_id": tokenizer.token_to_id(layout.bos),
        "eos_token_id": tokenizer.token_to_id(layout.eos),
        "pad_token_id": tokenizer.token_to_id(layout.pad),
        "hidden_act": "silu",
        "hidden_size": lm.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": lm.intermediate_size,
        "max_position_embeddings": lm.max_position_embeddings,
        "num_attention_heads": lm.num_attention_heads,
        "num_hidden_layers": lm.num_hidden_layers,
        "rms_norm_eps": lm.rms_norm_eps,
        "template_version": "chat",
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
        "vision_config": {
            "dropout_prob": 0.0,
            "hidden_act": "gelu",
            "hidden_size": vision.hidden_size,
            "image_size": vision.image_size,
            "in_channels": vision.in_channels,
            "intermediate_size": vision.intermediate_size,
            "layer_norm_eps": vision.layer_norm_eps,
            "num_heads": vision.num_heads,
            "num_hidden_layers": vision.num_hidden_layers,
            "num_positions": vision.num_positions,
            "patch_size": vision.patch_size,
        },
        "vocab_size": tokenizer.get_vocab_size(),
    }
    if spec.num_kv_heads is not None:  # CogVLM-1's config has no such field: its absence means MHA
        config["num_multi_query_heads"] = spec.num_kv_heads
    return config


def generation_config(spec: TinyVariant, tokenizer: Tokenizer) -> dict[str, Any]:
    """``generation_config.json``: the Llama-3 chat models also stop on ``<|eot_id|>``, so eos is a list."""
    layout = spec.tokenizer
    stop_ids = [tokenizer.token_to_id(t) for t in layout.stop]
    return {
        "bos_token_id": tokenizer.token_to_id(layout.bos),
        "eos_token_id": stop_ids[0] if len(stop_ids) == 1 else stop_ids,
        "pad_token_id": tokenizer.token_to_id(layout.pad),
    }


def _write_shards(weights: dict[str, torch.Tensor], out: Path) -> None:
    first, second = SHARD_NAMES
    weight_map = {
        name: first if name.startswith(("model.embed_tokens.", "model.layers.")) else second
        for name in sorted(weights)
    }
    for shard in SHARD_NAMES:
        tensors = {name: weights[name] for name, file in weight_map.items() if file == shard}
        save_file(tensors, str(out / shard), metadata={"format": "pt"})
    total_size = sum(t.numel() * t.element_size() for t in weights.values())
    _write_json(out / INDEX_NAME, {"metadata": {"total_size": total_size}, "weight_map": weight_map})


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise TinyOutputDirError(f"{out} is a file; give a folder path for the tiny checkpoint")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in CHECKPOINT_FILES) if out.is_dir() else []
    if foreign:
        raise TinyOutputDirError(
            f"{out} already holds {len(foreign)} other file(s), e.g. {', '.join(foreign[:3])}; "
            "choose an empty or new folder"
        )


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
