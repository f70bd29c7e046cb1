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
from collections.abc import Mapping, Sequence
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
    return _load_checked(model, check_adapter_folder(adapter), "default").merge_and_unload()


class AdapterBank:
    """Named LoRA adapters loaded side by side on one model, unmerged, and chosen per batch row.

    peft computes a mixed batch (``adapter_names``) by slicing each adapted layer's input by batch row, which holds
    for a step without vision tokens (every decode step: the experts then see (B, L, H) inputs). A step with images
    routes flattened token subsets through the experts and batches images apart from rows, so it runs one adapter
    at a time (the engine prefills one adapter's rows at a time): :meth:`forward` refuses a mixed one.

    The adapted layers are listed once: switching adapters touches only them, never the whole module tree, and the
    rows' names reach them through hooks registered once, reset after every call, error or not. Outside
    :meth:`forward` the model computes the base model (a forward pre-hook switches the adapters off), so code that
    calls the model directly (the lens, explain) never runs whichever adapter served last.
    """

    BASE = "__base__"  # peft's name for "no adapter" in a mixed batch
    _MIXED = "__mixed__"

    def __init__(self, model: Any, adapters: Mapping[str, str | Path]) -> None:
        from peft.tuners.lora import LoraLayer

        if not adapters:
            raise AdapterError("no adapters given: name at least one (NAME=PATH)")
        folders = {check_adapter_name(name): check_adapter_folder(path) for name, path in adapters.items()}
        for name, folder in folders.items():
            _check_servable(folder, name)
        peft_model: Any = None
        for name, folder in folders.items():
            peft_model = _load_checked(peft_model or model, folder, name)
        peft_model.eval()  # the LoRA layers live in ``model`` now; peft's wrapper is not needed beyond loading
        self.model = model
        self.folders = folders
        self._layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        self._state = ""  # BASE, an adapter's name or _MIXED: what the layers are set to compute
        self._rows: list[str] | None = None  # per-row names while a mixed forward runs
        self._inside = False
        for layer in self._layers:
            layer.register_forward_pre_hook(self._inject_rows, with_kwargs=True)
        model.register_forward_pre_hook(self._base_outside)
        self._use(self.BASE)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.folders)

    def forward(self, adapters: Sequence[str | None], **inputs: Any) -> Any:
        """The model's forward pass with adapter ``adapters[i]`` (None: the base model) on batch row i."""
        distinct = set(adapters)
        rows = None
        if len(distinct) == 1:
            (only,) = distinct
            state = self.BASE if only is None else only
        else:
            types = inputs.get("token_type_ids")
            if types is not None and bool(types.any()):  # vision positions
                raise ValueError("a batch with images runs one adapter at a time; group its rows by adapter")
            state, rows = self._MIXED, [self.BASE if a is None else a for a in adapters]
        self._use(state)
        self._rows, self._inside = rows, True
        try:
            return self.model(**inputs)
        finally:
            self._rows, self._inside = None, False

    def _use(self, state: str) -> None:
        if state == self._state:
            return
        for layer in self._layers:
            if state == self.BASE:
                layer.enable_adapters(False)
                continue
            layer.enable_adapters(True)
            layer.set_adapter(list(self.folders) if state == self._MIXED else state, inference_mode=True)
        self._state = state

    def _inject_rows(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        if self._rows is None:
            return None
        return args, {**kwargs, "adapter_names": self._rows}

    def _base_outside(self, module: Any, args: tuple) -> None:
        if not self._inside:
            self._use(self.BASE)


def parse_named_adapters(specs: Sequence[str], *, option: str = "--adapter") -> dict[str, Path]:
    """``NAME=PATH`` specs (as ``coglens serve --adapter`` takes them) -> {name: checked adapter folder}."""
    adapters: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not path:
            raise AdapterError(f"{option} {spec!r}: give NAME=PATH (the name clients send as adapter_id or model, "
                               "and the adapter folder)")
        name = check_adapter_name(name.strip())
        if name in adapters:
            raise AdapterError(f"{option}: the name {name!r} is given twice; each adapter needs its own name")
        adapters[name] = check_adapter_folder(path)
    return adapters


def check_adapter_name(name: str) -> str:
    """A name clients can send as ``adapter_id`` or ``model``: letters, digits and ``._-/:`` (no spaces)."""
    if not _ADAPTER_NAME.fullmatch(name) or name == AdapterBank.BASE:
        raise AdapterError(f"adapter name {name!r} is not usable: use 1-128 letters, digits or . _ - / : "
                           f"(and not {AdapterBank.BASE!r})")
    return name


_ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-/:]{0,127}")


# LoRA settings peft cannot serve per batch row, or that change what the base model computes (biases trained into
# shared layers, replicated layers, whole modules saved), with what they mean.
_NOT_PER_ROW = {
    "use_dora": "DoRA", "modules_to_save": "modules_to_save (whole modules trained beside the LoRA)",
    "trainable_token_indices": "trainable_token_indices", "target_parameters": "target_parameters",
    "layer_replication": "layer_replication", "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "use_qalora": "QALoRA", "arrow_config": "Arrow routing", "use_bdlora": "block-diagonal LoRA",
}


def _check_servable(folder: Path, name: str) -> None:
    """Mixed batches are peft's for plain LoRA: other adapter kinds, and LoRA settings that cannot be applied per
    row or that would change the shared base weights, are refused before anything loads."""
    from peft import PeftType

    config = _read_config(folder)
    merge = "; merge it (coglens merge-adapter) and serve the merged checkpoint"
    if config.peft_type != PeftType.LORA:
        kind = getattr(config.peft_type, "value", config.peft_type)
        raise AdapterError(f"adapter {name!r} ({folder}) is of type {kind}, not LoRA: only LoRA adapters can be "
                           f"served side by side{merge}")
    for field, what in _NOT_PER_ROW.items():
        if getattr(config, field, None):
            raise AdapterError(f"adapter {name!r} ({folder}) uses {what}, which cannot be served per batch row "
                               f"beside other adapters{merge}")
    if getattr(config, "bias", "none") != "none":
        raise AdapterError(f"adapter {name!r} ({folder}) trains biases (bias={config.bias!r}) of layers every request "
                           f"shares, so the base model would change with it{merge}")


def _read_config(folder: Path) -> Any:
    from peft import PeftConfig

    try:
        return PeftConfig.from_pretrained(str(folder))
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise AdapterError(f"cannot read the adapter config of {folder}: {_first_line(exc)}") from exc


def _load_checked(model: Any, folder: Path, name: str) -> Any:
    """``model`` (a base model, or a PeftModel holding other adapters) with the adapter in ``folder`` loaded as
    ``name``, every weight checked to land: peft only warns about missing or unknown ones."""
    from peft import PeftModel, get_peft_model_state_dict, load_peft_weights
    from safetensors import SafetensorError

    _read_config(folder)  # a config peft cannot read fails here, not deep inside peft
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    try:
        stored = set(load_peft_weights(str(folder), device="cpu"))
        with warnings.catch_warnings():  # missing weights are checked below, and are an error, not a warning
            warnings.filterwarnings("ignore", message="Found missing adapter keys")
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")  # peft's call
            if isinstance(model, PeftModel):
                model.load_adapter(str(folder), adapter_name=name)
                peft_model = model
            else:
                peft_model = PeftModel.from_pretrained(model, str(folder), adapter_name=name)
    except (ValueError, TypeError, KeyError, RuntimeError, OSError, SafetensorError) as exc:
        raise AdapterError(f"cannot apply the adapter {folder} to {_base_name(base)}: "
                           f"{_first_line(exc, name)}") from exc
    expected = set(get_peft_model_state_dict(peft_model, adapter_name=name))
    missing, unknown = sorted(expected - stored), sorted(stored - expected)
    if missing or unknown:
        what = (f"its file lacks {len(missing)} weight(s) of the modules its config adapts" if missing else
                f"its file has {len(unknown)} weight(s) for modules this model lacks")
        raise AdapterError(f"the adapter {folder} does not fit {_base_name(base)}: {what}, e.g. "
                           f"{_short((missing or unknown)[0], name)}")
    return peft_model


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


def _short(key: str, name: str = "default") -> str:
    """An adapter weight's name as the model's module tree spells it (without peft's wrapper prefixes)."""
    return key.removeprefix("base_model.model.").replace(f".{name}.", ".")


def _first_line(exc: BaseException, name: str = "default") -> str:
    """torch lists every mismatched tensor over many lines, in peft's names: the first, shortened, says enough."""
    mismatches = _SIZE_MISMATCH.findall(str(exc))
    if mismatches:
        key, found, wanted = mismatches[0]
        return (f"`{_short(key, name)}` has shape {found} in the adapter but {wanted} in the model "
                f"({len(mismatches)} mismatch(es) in all); it was made for another base model")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
