"""Load THUDM checkpoint folders as released: safetensors (single or sharded) or legacy ``.bin``.

The model is built on the meta device and each tensor is read once, cast, and placed where the device map puts
it, so peak memory stays close to one copy of the weights. ``.bin`` files are read with
``torch.load(weights_only=True)``: a checkpoint can never run code.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights
from accelerate.utils import get_balanced_memory, offload_weight, save_offload_index
from safetensors import SafetensorError, safe_open
from transformers import GenerationConfig

from ..hub import pop_hub_kwargs, resolve_checkpoint
from .attention import attention_function
from .configuration_cogvlm import COGVLM, COGVLM2_VIDEO, CogvlmConfig, ConfigError, declares_variant, load_config
from .dtypes import AUTO_DTYPE, dtype_name, unknown_dtype
from .quantization import INSTALL_HINT, QuantizationError, with_default_skips

logger = logging.getLogger(__name__)

# Buffers THUDM's checkpoints store although the model recomputes them; accepted, and used when present.
_OPTIONAL_BUFFERS = ("rotary_emb.inv_freq",)
_AUTO_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message names the file, the key and the shapes."""


def read_weight_map(index: Path) -> dict[str, str]:
    """The ``weight_map`` of a shard index (key -> shard file name), each shard checked to be a file name inside
    the index's folder: an index cannot point the loader at other files ("../../etc/passwd", absolute paths)."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index} is not a valid shard index ({exc}); download it again") from exc
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(f"{index}: `weight_map` must map weight names to shard file names")
    outside = sorted({v for v in weight_map.values() if Path(v).name != v or v in ("", ".", "..")})
    if outside:
        raise CheckpointError(
            f"{index} names shard files outside its folder ({', '.join(map(repr, outside[:3]))}); a shard must "
            "be a file name in the checkpoint folder: refused"
        )
    return weight_map


def checkpoint_files(folder: Path) -> list[Path]:
    """The weight files of a folder, in load order, after checking every shard the index names exists."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(read_weight_map(index).values()))
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


@contextmanager
def open_safetensors(file: Path) -> Iterator[Any]:
    """``safe_open`` that names the file when it is truncated or corrupt (a cut download, a bad copy)."""
    try:
        with safe_open(str(file), framework="pt") as f:
            yield f
    except SafetensorError as exc:
        raise CheckpointError(
            f"{file} is truncated or corrupt ({exc}); download it again (and compare its size with the source)"
        ) from exc


def iter_tensors(file: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) one at a time so only one tensor of the file is materialised at once."""
    if file.suffix == ".safetensors":
        with open_safetensors(file) as f:
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
            with open_safetensors(file) as f:
                keys.update(f.keys())
        else:
            index = file.parent / "pytorch_model.bin.index.json"
            if index.is_file():
                keys.update(k for k, v in read_weight_map(index).items() if v == file.name)
            else:
                keys.update(k for k, _ in iter_tensors(file))
    return keys


_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def checkpoint_dtype(files: list[Path]) -> torch.dtype | None:
    """The dtype of the first floating-point tensor, read from the safetensors header (no data is read)."""
    for file in files:
        if file.suffix != ".safetensors":
            return None
        with open_safetensors(file) as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                dtype = _SAFETENSORS_DTYPES.get(f.get_slice(key).get_dtype())
                if dtype is not None:
                    return dtype
    return None


def resolve_dtype(dtype: Any, config: CogvlmConfig, stored: torch.dtype | None = None) -> torch.dtype:
    """``None``/``"auto"``: the config's ``torch_dtype``, else the checkpoint's (``stored``), else float32."""
    if dtype is None or dtype == AUTO_DTYPE:
        declared = getattr(config, "dtype", None)
        if isinstance(declared, torch.dtype):
            return declared
        return stored or torch.float32
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype_name(dtype), None)
        if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:  # a float8_* this torch lacks
            raise unknown_dtype(dtype)
        return resolved
    return dtype


def load_pretrained(
    cls: type,
    path: str | os.PathLike | None = None,
    *args: Any,
    config: CogvlmConfig | str | os.PathLike | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    torch_dtype: Any = None,
    dtype: Any = None,
    device_map: str | dict | torch.device | None = None,
    max_memory: dict | None = None,
    offload_folder: str | os.PathLike | None = None,
    output_loading_info: bool = False,
    attn_implementation: str | None = None,
    **kwargs: Any,
):
    """Build ``cls`` from a checkpoint folder, a hub id, or ``config=`` + ``state_dict=``.

    Accepts transformers' keywords: hub ones (``revision``, ``cache_dir``, ``local_files_only``, ``token``),
    ``dtype``/``torch_dtype`` (``"auto"``), ``device_map``, ``attn_implementation``, ``output_loading_info``
    and config overrides (``output_hidden_states=True``...). Remote-code ones (``trust_remote_code``,
    ``low_cpu_mem_usage``...) are accepted and have no effect. A ``CogvlmModel`` checkpoint loads into
    ``CogvlmForCausalLM`` and back (``base_model_prefix``); missing weights are initialised and reported, as
    transformers does, and unexpected ones are reported and skipped.

    ``quantization_config=`` (or ``load_in_8bit``/``load_in_4bit``), and a folder whose config.json carries a
    ``quantization_config``, load through transformers' own loader (see :func:`_load_quantized`).
    """
    if device_map is None:  # a device context (``with torch.device(...)``) places the weights, as in transformers
        context_device = torch.empty(0).device
        if context_device.type == "meta":
            raise RuntimeError(
                "You are using `from_pretrained` with a meta device context manager or "
                "`torch.set_default_device('meta')`: from_pretrained loads weights; build an empty model with "
                "`ModelClass(config)` under the meta device instead"
            )
        device_map = context_device if context_device.type != "cpu" else None
    hub = pop_hub_kwargs(kwargs)
    folder = resolve_checkpoint(path, **hub) if path is not None else None
    if folder is None and (state_dict is None or not isinstance(config, CogvlmConfig)):
        raise CheckpointError("pass a checkpoint folder or hub id, or both config=CogvlmConfig(...) and state_dict=")
    if not isinstance(config, CogvlmConfig):
        config = load_config(config if config is not None else folder)
    else:
        config = copy.deepcopy(config)
    quantization = _quantization_request(kwargs)
    _refuse_unsupported(kwargs)
    for key in [k for k in kwargs if hasattr(config, k)]:  # config overrides, as transformers takes them
        setattr(config, key, kwargs.pop(key))
    if kwargs:
        raise TypeError(f"from_pretrained() got unknown keyword(s) {', '.join(sorted(kwargs))}: neither loading "
                        "options nor fields of the model's config")
    config.validate()
    if attn_implementation is not None:
        # one backend for all, or transformers' per-sub-config dict ({"": "sdpa", "vision_config": "eager"})
        names = attn_implementation.values() if isinstance(attn_implementation, dict) else [attn_implementation]
        for name in names:
            attention_function(name)  # refuse an unknown backend before loading anything
        config._attn_implementation = attn_implementation

    files = checkpoint_files(folder) if state_dict is None else []
    keys = set(state_dict) if state_dict is not None else checkpoint_keys(files)
    if folder is not None and not declares_variant(folder) and config.use_vision_experts and keys and not any(
        "vision_expert_query_key_value" in k for k in keys
    ):
        if config.variant == COGVLM:
            raise ConfigError(f"{folder}: the weights have no vision experts, which CogVLM-1 needs")
        config.use_vision_experts = False  # THUDM's video configs do not say so; their weights do
        config.variant = COGVLM2_VIDEO
    saved_dtype = resolve_dtype(None, config, checkpoint_dtype(files))  # what config.json / the weights say
    target_dtype = resolve_dtype(torch_dtype if torch_dtype is not None else dtype, config, checkpoint_dtype(files))
    config.dtype = target_dtype
    if quantization is not None or getattr(config, "quantization_config", None) is not None:
        return _load_quantized(cls, folder, config, quantization, saved_dtype=saved_dtype, device_map=device_map,
                               max_memory=max_memory, offload_folder=offload_folder,
                               output_loading_info=output_loading_info)
    source = str(folder) if folder is not None else "the given state_dict"

    with init_empty_weights(include_buffers=False):
        model = cls(config)
    model.eval()

    placement = _device_map(model, device_map, max_memory, target_dtype)
    offload_dir = _offload_dir(placement, offload_folder)
    offload_index: dict = {}
    expected = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    rename = _prefix_mapper(set(expected), keys, model.base_model_prefix)
    loaded: set[str] = set()
    unexpected: list[str] = []
    tensors = ((Path(source), k, t) for k, t in state_dict.items()) if state_dict is not None else (
        (file, k, t) for file in files for k, t in iter_tensors(file)
    )
    for file, stored_key, tensor in tensors:
        key = rename(stored_key)
        if key.endswith(_OPTIONAL_BUFFERS) and key in buffers:
            _check_shape(file, key, tuple(tensor.shape), tuple(buffers[key].shape))
            buffers[key].copy_(tensor.float())  # stored float32 table, used as is
            continue
        if key not in expected:
            unexpected.append(stored_key)
            continue
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
        _initialise_missing(model, missing, placement, target_dtype)
        logger.warning("Some weights of %s were not in %s and are newly initialised: %s", cls.__name__, source,
                       _shown(missing))
    if unexpected:
        logger.warning("Some weights of %s were not used (no such parameter in %s): %s", source, cls.__name__,
                       _shown(unexpected))

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
    if folder is not None and (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    model.name_or_path = source
    model.config._name_or_path = source
    if output_loading_info:  # sets, as transformers reports them
        return model, {"missing_keys": set(missing), "unexpected_keys": set(unexpected), "mismatched_keys": set(),
                       "error_msgs": []}
    return model


# transformers' loading keywords that have no effect here: remote code never runs, loading is always low-memory
# and prefers safetensors; the underscored ones are what transformers' Auto classes pass along
_NO_OP_KWARGS = ("trust_remote_code", "low_cpu_mem_usage", "use_safetensors", "resume_download", "proxies",
                 "code_revision", "_fast_init", "_from_auto", "_from_pipeline", "_commit_hash", "adapter_kwargs",
                 "ignore_mismatched_sizes")  # a shape mismatch stays an error naming file, key and shapes
_NOT_YET = {
    "variant": "weight-file variants (variant=)",
    "subfolder": "checkpoints in a subfolder (subfolder=)", "tp_plan": "tensor parallelism (tp_plan=)",
    "key_mapping": "renamed checkpoint keys (key_mapping=)",
}


def _refuse_unsupported(kwargs: dict[str, Any]) -> None:
    """Drop the no-op keywords; refuse the ones that would change what is loaded, rather than ignore them."""
    for key in _NO_OP_KWARGS:
        kwargs.pop(key, None)
    asked = [key for key in _NOT_YET if kwargs.get(key)]  # the Auto classes pass empty defaults (subfolder="")
    if asked:
        raise NotImplementedError(
            f"CogLens's from_pretrained does not support {', '.join(_NOT_YET[k] for k in asked)} yet "
            f"({', '.join(asked)}); load the full-precision checkpoint folder as released"
        )
    for key in _NOT_YET:
        kwargs.pop(key, None)


def _quantization_request(kwargs: dict[str, Any]) -> Any:
    """The quantization asked for: ``quantization_config=`` (a config object, or its dict as config.json stores
    it), or transformers' older ``load_in_8bit=True`` / ``load_in_4bit=True`` shorthands (bitsandbytes with its
    defaults); None when none is."""
    config = kwargs.pop("quantization_config", None)
    if isinstance(config, dict):
        from transformers.quantizers.auto import AutoQuantizationConfig

        config = AutoQuantizationConfig.from_dict(config)
    shorthands = {key: True for key in ("load_in_8bit", "load_in_4bit") if kwargs.pop(key, False)}
    if shorthands and (config is not None or len(shorthands) > 1):
        raise QuantizationError(
            f"pass one quantization: {', '.join([*shorthands, *(['quantization_config'] if config else [])])} "
            "were all given"
        )
    if shorthands:
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(**shorthands)
    return config


def _load_quantized(
    cls: type, folder: Path | None, config: CogvlmConfig, quantization: Any, *, saved_dtype: torch.dtype,
    device_map: Any,
    max_memory: dict | None, offload_folder: str | os.PathLike | None, output_loading_info: bool,
):
    """Quantized loading, through transformers' own ``PreTrainedModel.from_pretrained`` and its quantizers.

    The key names of THUDM's checkpoints are the model's, so transformers' loader reads them as released; it
    quantizes each weight as it is read (one full-precision tensor at a time), or, when config.json carries a
    ``quantization_config`` (THUDM's int4 release, a ``save_pretrained`` of a quantized model), loads the stored
    quantized tensors as they are: nothing is quantized again and no full-precision copy is ever built. A
    requested quantization without a skip list gets the class's ``_skip_quantization_modules``; a saved one is
    used exactly as stored (its skip list is what its weights were quantized with).
    """
    from transformers import PreTrainedModel

    saved = getattr(config, "quantization_config", None)
    if folder is None:
        raise CheckpointError("quantized loading reads a checkpoint folder: save the state_dict with "
                              "save_pretrained and load that folder")
    if saved is not None and quantization is not None:
        method = saved.get("quant_method", "?") if isinstance(saved, dict) else type(saved).__name__
        raise QuantizationError(
            f"{folder} is already quantized ({method} in its config.json) and loads as it was saved: "
            "leave out quantization_config (--quantize)"
        )
    int4 = type(getattr(quantization, "quant_type", None)).__name__ == "Int4WeightOnlyConfig"
    if int4 and config.dtype != torch.bfloat16:  # torchao would fail deep in every layer's conversion
        asked = str(config.dtype).removeprefix("torch.")
        raise QuantizationError(f"int4 (torchao int4 weight-only) runs in bfloat16 only; load with "
                                f"dtype=torch.bfloat16 (--dtype bfloat16), not {asked}")
    dtype = config.dtype if saved is None else _saved_dtype(folder, saved, saved_dtype, config.dtype)
    options: dict[str, Any] = {"config": config, "dtype": dtype, "output_loading_info": output_loading_info}
    if quantization is not None:
        options["quantization_config"] = with_default_skips(quantization, cls._skip_quantization_modules)
    for key, value in (("device_map", device_map), ("max_memory", max_memory), ("offload_folder", offload_folder)):
        if value is not None:
            options[key] = value
    loaded = PreTrainedModel.from_pretrained.__func__(cls, folder, **options)
    model = loaded[0] if output_loading_info else loaded
    for module in model.modules():  # small buffers (rotary tables) may be views into the mapped shard files,
        for name, buffer in module._buffers.items():  # which would stay mapped as long as the model lives
            if buffer is not None and not buffer.is_meta:
                module._buffers[name] = buffer.clone()
    return loaded


_QUANT_LIBRARIES = {"bitsandbytes": "bitsandbytes", "torchao": "torchao"}


def _saved_dtype(folder: Path, saved: Any, stored: torch.dtype, asked: torch.dtype) -> torch.dtype:
    """The dtype a pre-quantized folder was saved in (``stored``), which it must load in: its quantized layers keep
    it, so any other would mix dtypes. Also checks its ``quantization_config`` names a method and a library we
    have."""
    method = saved.get("quant_method") if isinstance(saved, dict) else getattr(saved, "quant_method", None)
    method = getattr(method, "value", method)
    if method not in _QUANT_LIBRARIES:
        raise QuantizationError(
            f"{folder}/config.json: quantization_config has quant_method {method!r}; CogLens loads "
            f"{' and '.join(_QUANT_LIBRARIES)} checkpoints")
    if importlib.util.find_spec(_QUANT_LIBRARIES[method]) is None:
        raise QuantizationError(f"{folder} is quantized with {method}, which is not installed: {INSTALL_HINT}")
    if stored != asked:
        logger.warning("%s was saved quantized in %s and loads in it (not %s): its quantized layers keep the dtype "
                       "they were saved with", folder, str(stored).removeprefix("torch."),
                       str(asked).removeprefix("torch."))
    return stored


def _prefix_mapper(expected: set[str], keys: set[str], prefix: str) -> Callable[[str], str]:
    """Map checkpoint keys onto the model's: a base-model checkpoint into a head model and back."""
    head = prefix + "."
    model_has = any(k.startswith(head) for k in expected)
    checkpoint_has = any(k.startswith(head) for k in keys)
    if model_has == checkpoint_has:
        return lambda key: key
    if checkpoint_has:  # e.g. CogvlmForCausalLM weights into CogvlmModel: drop "model.", lm_head is unexpected
        return lambda key: key[len(head):] if key.startswith(head) else key
    return lambda key: key if key in expected else head + key


def _initialise_missing(model: Any, missing: list[str], placement: dict[str, Any], dtype: torch.dtype) -> None:
    """Materialise weights the checkpoint lacks and let the model's ``_init_weights`` draw them (through
    ``_initialize_weights``, as transformers' own loader does)."""
    for param in model.parameters():
        if not param.is_meta:
            param._is_hf_initialized = True  # transformers' init functions leave loaded tensors alone
    owners = {}
    for key in missing:
        device = _device_for(key, placement)
        shape = model.get_parameter(key).shape
        _set_parameter(model, key, torch.empty(shape, dtype=dtype, device="cpu" if device == "disk" else device))
        owners[key.rpartition(".")[0]] = None
    with torch.no_grad():
        for name in owners:
            module = model.get_submodule(name)
            module._is_hf_initialized = False  # set by the (meta-device) init at construction
            model._initialize_weights(module)  # transformers' per-module entry point around _init_weights


def _shown(keys: list[str]) -> str:
    return ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")


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


_WRITTEN_BY_SAVE = ("config.json", "generation_config.json")


def save_next_to(model: Any, source: Path, out: Path) -> Path:
    """``model.save_pretrained(out)``, plus the files of ``source`` that are not weights nor written by the save
    (tokenizer, preprocessor, chat template...), so ``out`` loads, chats and serves as ``source`` did."""
    import shutil

    model.save_pretrained(out)
    weights = {f.name for f in checkpoint_files(source)} | {"model.safetensors.index.json",
                                                            "pytorch_model.bin.index.json"}
    for file in source.iterdir():
        if file.is_file() and file.name not in weights and file.name not in _WRITTEN_BY_SAVE:
            shutil.copy2(file, out / file.name)
    return out
