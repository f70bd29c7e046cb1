"""PEFT adapters (``adapter_config.json`` + ``adapter_model.safetensors``) on CogLens's model, loaded by peft itself.

An adapter is merged into the weights (``merge_and_unload``): the model keeps its own module tree, so the engine,
the lens's module names and ``save_pretrained`` work on it as on any checkpoint, and answers cost nothing extra.
Adapters name modules of THUDM's tree (``language_expert_query_key_value``, ``mlp.language_mlp.gate_proj``,
``model.vision.transformer...``), which is ours, so adapters trained on THUDM's remote code load here too.

Light to import (peft and torch load inside the functions): the CLI checks an ``--adapter`` folder with it first.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


class AdapterError(ValueError):
    """An adapter folder that cannot be applied to the model; the message says which folder and why."""


def check_adapter_folder(adapter: str | Path) -> Path:
    """``adapter`` is a folder holding a PEFT adapter (its config and weights): checked before any model loads."""
    folder = Path(adapter).expanduser()
    if not folder.is_dir():
        raise AdapterError(f"adapter {str(folder)!r} " + ("is a file, not a folder" if folder.exists()
                                                         else "does not exist"))
    if not (folder / ADAPTER_CONFIG).is_file() or not any((folder / w).is_file() for w in ADAPTER_WEIGHTS):
        raise AdapterError(f"{folder} is not a PEFT adapter: it needs {ADAPTER_CONFIG} and "
                           f"{' or '.join(ADAPTER_WEIGHTS)} (what peft's save_pretrained writes)")
    return folder


def apply_adapter(model: Any, adapter: str | Path) -> Any:
    """Load the PEFT adapter in folder ``adapter`` onto ``model`` with ``peft.PeftModel`` and merge it into the
    weights; returns the merged model (``model`` itself, changed in place). Every adapter weight must land on a
    module of the model and every adapted module must get its weights: peft only warns about either."""
    from peft import PeftConfig, PeftModel, get_peft_model_state_dict, load_peft_weights

    folder = check_adapter_folder(adapter)
    try:
        PeftConfig.from_pretrained(str(folder))  # a config peft cannot read fails here, not deep inside peft
        stored = set(load_peft_weights(str(folder), device="cpu"))
        with warnings.catch_warnings():  # missing weights are checked below, and are an error, not a warning
            warnings.filterwarnings("ignore", message="Found missing adapter keys")
            peft_model = PeftModel.from_pretrained(model, str(folder))
    except (ValueError, TypeError, KeyError, RuntimeError, OSError) as exc:
        raise AdapterError(f"cannot apply the adapter {folder} to {_base_name(model)}: "
                           f"{_first_line(exc)}") from exc
    expected = set(get_peft_model_state_dict(peft_model))
    missing, unknown = sorted(expected - stored), sorted(stored - expected)
    if missing or unknown:
        what = (f"its file lacks {len(missing)} weight(s) of the modules its config adapts" if missing else
                f"its file has {len(unknown)} weight(s) for modules this model lacks")
        raise AdapterError(f"the adapter {folder} does not fit {_base_name(model)}: {what}, e.g. "
                           f"{_short((missing or unknown)[0])}")
    return peft_model.merge_and_unload()


def merge_adapter(base: str | Path, adapter: str | Path, out_dir: str | Path) -> Path:
    """Write ``base`` with ``adapter`` merged into its weights to ``out_dir``: a full checkpoint in THUDM's layout
    (its weight names and config fields, safetensors), the base's tokenizer files copied along, that loads
    anywhere the base does, with no peft needed."""
    from .loading import save_next_to
    from .modeling_cogvlm import CogvlmForCausalLM

    check_adapter_folder(adapter)
    source, out = Path(base), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AdapterError(f"{out} already exists and is not an empty folder; give a new output folder")
    model = apply_adapter(CogvlmForCausalLM.from_pretrained(source, torch_dtype="auto"), adapter)
    return save_next_to(model, source, out)


def _base_name(model: Any) -> str:
    return str(getattr(model, "name_or_path", "") or "this model")


_SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[.*?\])\) from "
                            r"checkpoint, the shape in current model is torch\.Size\((\[.*?\])\)")


def _short(key: str) -> str:
    """An adapter weight's name as the model's module tree spells it (without peft's wrapper prefixes)."""
    return key.removeprefix("base_model.model.").replace(".default.", ".")


def _first_line(exc: BaseException) -> str:
    """torch lists every mismatched tensor over many lines, in peft's names: the first, shortened, says enough."""
    mismatches = _SIZE_MISMATCH.findall(str(exc))
    if mismatches:
        key, found, wanted = mismatches[0]
        return (f"`{_short(key)}` has shape {found} in the adapter but {wanted} in the model "
                f"({len(mismatches)} mismatch(es) in all); it was made for another base model")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
