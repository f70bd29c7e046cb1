"""Load THUDM checkpoint folders as released: safetensors (single or sharded) or legacy ``.bin``.

The model is built on the meta device and each tensor is read once, cast, and placed where the device map puts
it, so peak memory stays close to one copy of the weights. ``.bin`` files are read with
``torch.load(weights_only=True)``: a checkpoint can never run code.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights
from accelerate.utils import get_balanced_memory, offload_weight, save_offload_index
from safetensors import safe_open
from transformers import GenerationConfig

from .configuration_cogvlm import CogvlmConfig, ConfigError, load_config

logger = logging.getLogger(__name__)

# Buffers THUDM's checkpoints store although the model recomputes them; accepted, and used when present.
_OPTIONAL_BUFFERS = ("rotary_emb.inv_freq",)
_AUTO_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message names the file, the key and the shapes."""


def checkpoint_files(folder: Path) -> list[Path]:
    """The weight files of a folder, in load order, after checking every shard the index names exists."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise CheckpointError(f"{index} is not a valid shard index ({exc})") from exc
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise CheckpointError(
                    f"{index} lists shard(s) that are not in {folder}: {', '.join(missing)}; "
                    "the download is incomplete, fetch the missing file(s) again"
                )
            return [folder / s for s in shards]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return [folder / single]
    raise CheckpointError(
        f"no weights in {folder}: expected model.safetensors, model-0000k-of-0000n.safetensors with "
        "model.safetensors.index.json, or pytorch_model*.bin"
    )


def iter_tensors(file: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) one at a time so only one tensor of the file is materialised at once."""
    if file.suffix == ".safetensors":
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield key, f.get_tensor(key)
    else:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # an unpickling refusal or a corrupt archive
            raise CheckpointError(f"cannot read {file} safely as a weights-only PyTorch file: {exc}") from exc
        yield from state.items()
        del state


def checkpoint_keys(files: list[Path]) -> set[str]:
    keys: set[str] = set()
    for file in files:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as f:
                keys.update(f.keys())
        else:
            index = file.parent / "pytorch_model.bin.index.json"
            if index.is_file():
                keys.update(k for k, v in json.loads(index.read_text())["weight_map"].items() if v == file.name)
            else:
                keys.update(k for k, _ in iter_tensors(file))
    return keys


def resolve_dtype(dtype: Any, config: CogvlmConfig) -> torch.dtype:
    if dtype is None or dtype == "auto":
        stored = getattr(config, "dtype", None)
        return stored if isinstance(stored, torch.dtype) else torch.float32
    if isinstance(dtype, str):
        name = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}.get(dtype, dtype)
        resolved = getattr(torch, name, None)
        if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
            raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
        return resolved
    return dtype


def load_pretrained(
    cls: type,
    path: str | os.PathLike,
    *args: Any,
    config: CogvlmConfig | None = None,
    torch_dtype: Any = None,
    dtype: Any = None,
    device_map: str | dict | torch.device | None = None,
    max_memory: dict | None = None,
    offload_folder: str | os.PathLike | None = None,
    **kwargs: Any,
):
    """Build ``cls`` from a checkpoint folder. Accepts the usual transformers keywords; remote-code ones
    (``trust_remote_code``, ``low_cpu_mem_usage``...) are accepted and have no effect."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(
            f"{path} is not a local folder; coglens loads checkpoint folders as THUDM releases them "
            "(download one first, e.g. `huggingface-cli download THUDM/cogvlm2-llama3-chat-19B --local-dir DIR`)"
        )
    if not isinstance(config, CogvlmConfig):
        config = load_config(folder)
    files = checkpoint_files(folder)
    keys = checkpoint_keys(files)
    if config.use_vision_experts and not any("vision_expert_query_key_value" in k for k in keys):
        if config.variant == "cogvlm":
            raise ConfigError(f"{folder}: the weights have no vision experts, which CogVLM-1 needs")
        config.use_vision_experts = False  # the video models drop the experts; the weights tell
        config.variant = "cogvlm2_video"
    target_dtype = resolve_dtype(torch_dtype if torch_dtype is not None else dtype, config)
    config.dtype = target_dtype

    with init_empty_weights(include_buffers=False):
        model = cls(config)
    model.eval()

    placement = _device_map(model, device_map, max_memory, target_dtype)
    offload_dir = _offload_dir(placement, offload_folder)
    offload_index: dict = {}
    expected = dict(model.named_parameters())
    loaded: set[str] = set()
    buffers = dict(model.named_buffers())
    for file in files:
        for key, tensor in iter_tensors(file):
            if key.endswith(_OPTIONAL_BUFFERS) and key in buffers:
                _check_shape(file, key, tuple(tensor.shape), tuple(buffers[key].shape))
                buffers[key].copy_(tensor.float())  # stored float32 table, used as is
                continue
            if key not in expected:
                raise CheckpointError(
                    f"{file.name}: key `{key}` {tuple(tensor.shape)} is not a parameter of a {config.variant} "
                    f"model built from {folder / 'config.json'}; is the config from another checkpoint?"
                )
            _check_shape(file, key, tuple(tensor.shape), tuple(expected[key].shape))
            device = _device_for(key, placement)
            tensor = tensor.to(target_dtype)
            if device == "disk":
                offload_weight(tensor, key, offload_dir, index=offload_index)
            else:
                _set_parameter(model, key, tensor.to(device))
            loaded.add(key)
    missing = sorted(set(expected) - loaded)
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise CheckpointError(f"{folder}: the checkpoint lacks {len(missing)} weight(s) the model needs: {shown}")

    devices = set(placement.values())
    if len(devices) > 1 or "disk" in devices:
        if offload_index:
            save_offload_index(offload_index, offload_dir)
        model = dispatch_model(model, placement, offload_dir=offload_dir if offload_index else None,
                               offload_index=offload_index or None)
    else:
        only = next(iter(devices))
        for name, buf in buffers.items():  # buffers were built on CPU; follow the weights
            _set_buffer(model, name, buf.to(only))
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    model.name_or_path = str(folder)
    return model


def _check_shape(file: Path, key: str, found: tuple, wanted: tuple) -> None:
    if found != wanted:
        raise CheckpointError(
            f"{file.name}: `{key}` has shape {found} in the checkpoint but the model built from config.json "
            f"expects {wanted}; the config and the weights do not belong together"
        )


def _device_map(model: Any, device_map: Any, max_memory: dict | None, dtype: torch.dtype) -> dict[str, Any]:
    if device_map is None:
        return {"": "cpu"}
    if isinstance(device_map, (torch.device, int)) or (isinstance(device_map, str) and device_map not in _AUTO_MAPS):
        return {"": torch.device(device_map) if not isinstance(device_map, int) else torch.device("cuda", device_map)}
    if isinstance(device_map, dict):
        return dict(device_map)
    no_split = model._no_split_modules
    if device_map != "sequential":
        max_memory = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split,
                                         dtype=dtype, low_zero=device_map == "balanced_low_0")
    return infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype)


def _device_for(key: str, placement: dict[str, Any]) -> Any:
    best, best_len = placement.get("", "cpu"), -1
    for prefix, device in placement.items():
        if prefix and (key == prefix or key.startswith(prefix + ".")) and len(prefix) > best_len:
            best, best_len = device, len(prefix)
    return best


def _offload_dir(placement: dict[str, Any], folder: str | os.PathLike | None) -> str | None:
    if "disk" not in placement.values():
        return None
    if folder is None:
        folder = tempfile.mkdtemp(prefix="coglens-offload-")
        logger.warning("offloading part of the model to disk in %s (pass offload_folder= to choose)", folder)
    os.makedirs(folder, exist_ok=True)
    return str(folder)


def _owner(model: Any, key: str) -> tuple[Any, str]:
    module_path, _, name = key.rpartition(".")
    return (model.get_submodule(module_path) if module_path else model), name


def _set_parameter(model: Any, key: str, value: torch.Tensor) -> None:
    module, name = _owner(model, key)
    module._parameters[name] = torch.nn.Parameter(value)


def _set_buffer(model: Any, key: str, value: torch.Tensor) -> None:
    module, name = _owner(model, key)
    module._buffers[name] = value
