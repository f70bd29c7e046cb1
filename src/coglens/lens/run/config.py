"""Lens (activation extraction) configuration: VLM-Lens YAML files as they are, plus CogLens extensions.

VLM-Lens keys: ``architecture``, ``model_path``, ``model`` and ``forward`` (lists of one-key maps, merged),
``modules``, ``prompt``, ``input_dir``, ``dataset`` (list of one-key maps, merged into one source),
``output_db``, ``pooling_method``, ``device``, ``debug``, ``log_named_modules``. CogLens adds ``output`` (a
path or database URL; the same setting as ``output_db``), ``output_format``, ``dtype``, ``quantize`` and
``quantize_vision`` (as ``--quantize``, ``--quantize-vision``), ``adapter`` (a PEFT adapter folder merged into the
weights, as ``--adapter``; recorded as an absolute path, so the run says which adapter), ``store_dtype``,
``batch_size``, ``run_name``, ``overwrite``, ``manifest``, ``capture``, ``tokens``, ``pooling`` (the same
setting as ``pooling_method``; VLM-Lens's ``None`` means ``none``), ``steps``, ``interventions`` and ``clean_run``
(see :mod:`coglens.lens.run.interventions`), and module entries written as maps
(``{name: PATTERN, tokens: ..., pooling: ..., path: ...}``) besides plain patterns.

VLM-Lens ignores unknown keys silently; we warn once, naming each with the closest known key. Command-line
values override the file only when given (None = not given): unlike VLM-Lens, whose ``--device`` default
always overrode the YAML.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from coglens.lens.capture.choices import CAPTURE_CHOICES, POOLING_CHOICES, STEP_CHOICES, TOKEN_CHOICES
from coglens.lens.capture.modules import ModuleEntry, ModuleMatchError, compile_pattern
from coglens.lens.capture.paths import CapturePath, CapturePathError
from coglens.lens.capture.select import SelectionError, TokenSpec
from coglens.lens.run.interventions import check_against_captures, parse_interventions
from coglens.lens.store.connection import without_password
from coglens.lens.store.formats import COGLENS_FORMAT, MODEL_STORE_DTYPE, OUTPUT_FORMATS, STORE_DTYPES
from coglens.modeling.configuration_cogvlm import VARIANTS
from coglens.modeling.dtypes import AUTO_DTYPE, DTYPE_CHOICES
from coglens.modeling.quantization import SCHEMES
from coglens.processing.template import TEMPLATE_VERSIONS

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = "embeddings.db"  # VLM-Lens's default
MANIFEST_SUFFIXES = (".jsonl", ".csv")
DEVICE_CHOICES = "cpu | cuda | cuda:N | mps | auto (spread over all GPUs)"
_DEVICE = re.compile(r"cpu|cuda(:\d+)?|mps|auto")

VLM_LENS_KEYS = (
    "architecture",
    "model_path",
    "model",
    "forward",
    "modules",
    "prompt",
    "input_dir",
    "dataset",
    "output_db",
    "pooling_method",
    "device",
    "debug",
    "log_named_modules",
)
COGLENS_KEYS = (
    "output",
    "output_format",
    "dtype",
    "quantize",
    "quantize_vision",
    "adapter",
    "store_dtype",
    "batch_size",
    "run_name",
    "overwrite",
    "manifest",
    "capture",
    "tokens",
    "pooling",
    "steps",
    "interventions",
    "clean_run",
)
KNOWN_KEYS = VLM_LENS_KEYS + COGLENS_KEYS
MODEL_KEYS = ("low_cpu_mem_usage", "trust_remote_code", "tokenizer_path", "legacy", "template_version")
DATASET_KEYS = ("dataset_path", "local_dataset_path", "dataset_split", "image_dataset_path")
MODULE_ENTRY_KEYS = ("name", "tokens", "pooling", "path")
INPUT_KEYS = ("input_dir", "dataset", "manifest")
# Command-line names that differ from the key they set: `--model` is the checkpoint, not the `model:` options.
OVERRIDE_ALIASES = {"model": "model_path", "output_db": "output"}


class LensConfigError(ValueError):
    """A lens config value that is missing, of the wrong type or not one of the valid choices."""


@dataclass(frozen=True)
class ModelOptions:
    """The ``model:`` options; ``trust_remote_code`` is accepted and ignored (we never run remote code)."""

    low_cpu_mem_usage: bool = True
    tokenizer_path: str | None = None
    legacy: bool | None = None
    template_version: str | None = None  # base | chat | vqa; None = the checkpoint's own


@dataclass(frozen=True)
class DatasetSource:
    """The ``dataset:`` source: a hub dataset or a saved one, its split, and the folder its images live in."""

    dataset_path: str | None = None
    local_dataset_path: str | None = None
    dataset_split: str | None = None
    image_dataset_path: str | None = None


@dataclass(frozen=True)
class LensConfig:
    """A validated lens config; see the module docstring for where each field comes from."""

    model_path: str
    modules: tuple[ModuleEntry, ...] = ()
    architecture: str | None = None  # None = detect from the checkpoint
    model: ModelOptions = ModelOptions()
    forward: Mapping[str, Any] = field(default_factory=dict)  # generate() kwargs (max_new_tokens...)
    prompt: str | None = None
    input_dir: Path | None = None
    dataset: DatasetSource | None = None
    manifest: Path | None = None
    output: str = DEFAULT_OUTPUT
    output_format: str = COGLENS_FORMAT
    device: str | None = None  # None = the runner's choice (cuda when available)
    dtype: str = AUTO_DTYPE
    quantize: str | None = None  # one of coglens.modeling.quantization.SCHEMES; None = full precision
    quantize_vision: bool = False  # quantize the vision tower, adapter and lm_head too
    adapter: str | None = None  # absolute path of a PEFT adapter folder merged into the weights; None = none
    store_dtype: str = MODEL_STORE_DTYPE
    batch_size: int = 1
    run_name: str | None = None
    overwrite: bool = False
    capture: str = "output"
    tokens: TokenSpec = TokenSpec("all")
    pooling: str = "none"
    steps: str = "prefill"
    debug: bool = False
    log_named_modules: bool = False
    interventions: tuple[Mapping[str, Any], ...] = ()  # checked entries (see coglens.lens.run.interventions)
    clean_run: str | None = None  # with interventions: the run of the same inputs without them (default NAME.clean)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (what a run records as its config)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (ModelOptions, DatasetSource)):
                value = {k.name: getattr(value, k.name) for k in fields(value)}
            elif f.name == "modules":
                value = [_entry_dict(e) for e in value]
            elif f.name == "interventions":  # None when there are none, as runs stored before they existed say
                value = [dict(e) for e in value] or None
            elif isinstance(value, (Path, TokenSpec)):
                value = str(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out


def _entry_dict(entry: ModuleEntry) -> str | dict[str, Any]:
    if entry.tokens is None and entry.pooling is None and entry.path is None:
        return entry.pattern
    extra = {
        "tokens": None if entry.tokens is None else str(entry.tokens),
        "pooling": entry.pooling,
        "path": entry.path,
    }
    return {"name": entry.pattern, **{k: v for k, v in extra.items() if v is not None}}


class _Reader:
    """Typed access to the raw mapping; every error names the key, the bad value, its source and the fix."""

    def __init__(self, raw: dict[str, Any], sources: dict[str, str]) -> None:
        self.raw = raw
        self.sources = sources

    def fail(self, key: str, value: Any, expected: str) -> LensConfigError:
        source = self.sources.get(key.split(".")[0].split("[")[0], "defaults")
        return LensConfigError(f"{key}: {value!r} (from {source}) is not valid; expected {expected}")

    def get(self, key: str, default: Any = None) -> Any:
        value = self.raw.get(key)
        return default if value is None else value

    def choice(self, key: str, choices: tuple[str, ...], default: str | None) -> str | None:
        value = self.get(key, default)
        if value is not None and value not in choices:
            raise self.fail(key, value, "one of: " + " | ".join(choices))
        return value

    def boolean(self, key: str, default: bool | None, value: Any = None) -> bool | None:
        value = self.get(key, default) if value is None else value
        if value is not None and not isinstance(value, bool):
            raise self.fail(key, value, "true or false")
        return value

    def text(self, key: str, value: Any = None) -> str | None:
        value = self.get(key) if value is None else value
        if value is not None and not isinstance(value, (str, Path)):
            raise self.fail(key, value, "a string")
        return None if value is None else str(value)

    def merged(self, key: str, *, unique: bool = False) -> dict[str, Any]:
        """A VLM-Lens list of one-key maps (or a plain map) merged into one dict, later items winning."""
        value = self.get(key, [])
        items = [value] if isinstance(value, Mapping) else value
        if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
            raise self.fail(key, value, "a list of one-key maps, e.g. [{key: value}, ...]")
        merged: dict[str, Any] = {}
        for item in items:
            repeated = sorted(set(item) & set(merged))
            if unique and repeated:
                raise self.fail(key, value, f"each key once (one source per config); repeated: {repeated}")
            merged.update(item)
        return merged


def _closest_hint(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    return f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key)


def _warn_unknown(
    raw: Mapping[str, Any], model: Mapping[str, Any], dataset: Mapping[str, Any], where: str
) -> None:
    unknown = [_closest_hint(k, KNOWN_KEYS) for k in raw if k not in KNOWN_KEYS]
    unknown += [f"model.{_closest_hint(k, MODEL_KEYS)}" for k in model if k not in MODEL_KEYS]
    unknown += [f"dataset.{_closest_hint(k, DATASET_KEYS)}" for k in dataset if k not in DATASET_KEYS]
    if unknown:
        logger.warning("%s: ignoring unknown keys %s", where, ", ".join(unknown))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise LensConfigError(f"cannot read lens config {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise LensConfigError(f"lens config {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except yaml.YAMLError as error:
        raise LensConfigError(f"{path} is not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LensConfigError(f"{path} must hold a mapping of config keys, not a {type(data).__name__}")
    return data


def _apply_overrides(raw: dict[str, Any], sources: dict[str, str], overrides: Mapping[str, Any]) -> None:
    """Given overrides replace the file's values, including the file's alias of the same setting and, for an
    input source, the file's other input sources."""
    for name, value in overrides.items():
        if value is None:
            continue
        key = OVERRIDE_ALIASES.get(name, name)
        if key not in KNOWN_KEYS:
            raise LensConfigError(f"unknown override {name!r}; overridable keys: {', '.join(KNOWN_KEYS)}")
        replaced = {"output": ("output_db",), "pooling": ("pooling_method",)}.get(key, ())
        if key in INPUT_KEYS:
            replaced = tuple(k for k in INPUT_KEYS if k != key)
        for alias in replaced:
            raw.pop(alias, None)
        raw[key] = value
        sources[key] = "the command line"


def _aliased(reader: _Reader, key: str, alias: str) -> str | None:
    """The value of a setting that two keys may give; both given and different is an error."""
    value, other = reader.text(key), reader.text(alias)
    if value is not None and other is not None and value != other:
        raise LensConfigError(
            f"{key}: {without_password(value)!r} and {alias}: {without_password(other)!r} set the same thing to "
            "different values; keep one"
        )
    return other if value is None else value


def _parsed(reader: _Reader, key: str, value: Any, parse: Callable[[Any], Any], expected: str) -> Any:
    try:
        return parse(value)
    except (SelectionError, CapturePathError, ModuleMatchError) as error:
        raise reader.fail(key, value, f"{expected} ({error})") from None


def _module_entries(reader: _Reader) -> tuple[ModuleEntry, ...]:
    value = reader.get("modules", [])
    items = [value] if isinstance(value, (str, Mapping)) else value
    if not isinstance(items, list):
        raise reader.fail("modules", value, "a list of module name patterns")
    entries = []
    for i, item in enumerate(items):
        key = f"modules[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise reader.fail(key, item, "a pattern string or a map with a `name` pattern")
        unknown = sorted(set(item) - set(MODULE_ENTRY_KEYS))
        if unknown:
            raise reader.fail(key, item, f"only the keys {', '.join(MODULE_ENTRY_KEYS)} (unknown: {unknown})")
        _parsed(reader, f"{key}.name", item["name"], compile_pattern, "a regular expression or glob: pattern")
        tokens = item.get("tokens")
        if tokens is not None:
            tokens = _parsed(reader, f"{key}.tokens", tokens, TokenSpec.parse, TOKEN_CHOICES)
        pooling = item.get("pooling")
        if pooling is not None and pooling not in POOLING_CHOICES:
            raise reader.fail(f"{key}.pooling", pooling, "one of: " + " | ".join(POOLING_CHOICES))
        path = reader.text(f"{key}.path", item.get("path"))
        if path is not None:
            _parsed(
                reader, f"{key}.path", path, CapturePath.parse, "a path like output[0] or input.hidden_states"
            )
        entries.append(ModuleEntry(pattern=item["name"], tokens=tokens, pooling=pooling, path=path))
    return tuple(entries)


def _model_options(reader: _Reader, options: Mapping[str, Any]) -> ModelOptions:
    if options.get("trust_remote_code"):
        logger.info(
            "model.trust_remote_code is accepted for VLM-Lens configs and ignored: CogLens runs its own "
            "CogVLM implementation and never executes code shipped with a checkpoint"
        )
    version = options.get("template_version")
    if version is not None and version not in TEMPLATE_VERSIONS:
        raise reader.fail("model.template_version", version, "one of: " + " | ".join(TEMPLATE_VERSIONS))
    return ModelOptions(
        low_cpu_mem_usage=reader.boolean("model.low_cpu_mem_usage", True, options.get("low_cpu_mem_usage")),
        tokenizer_path=reader.text("model.tokenizer_path", options.get("tokenizer_path")),
        legacy=reader.boolean("model.legacy", None, options.get("legacy")),
        template_version=version,
    )


def _dataset(reader: _Reader, options: Mapping[str, Any]) -> DatasetSource | None:
    if reader.get("dataset") is None:
        return None
    values = {k: reader.text(f"dataset.{k}", options.get(k)) for k in DATASET_KEYS}
    if (values["dataset_path"] is None) == (values["local_dataset_path"] is None):
        raise reader.fail(
            "dataset",
            reader.raw["dataset"],
            "exactly one of dataset_path (a hub dataset) or local_dataset_path (a dataset saved with "
            "save_to_disk)",
        )
    return DatasetSource(**values)


def _forward(reader: _Reader) -> dict[str, Any]:
    forward = reader.merged("forward")
    tokens = forward.get("max_new_tokens")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
        raise reader.fail("forward.max_new_tokens", tokens, "a positive integer")
    reader.boolean("forward.do_sample", None, forward.get("do_sample"))
    return forward


def _positive_int(reader: _Reader, key: str, default: int) -> int:
    value = reader.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise reader.fail(key, value, "a positive integer")
    return value


def _inputs(reader: _Reader, log_named_modules: bool) -> None:
    given = [k for k in INPUT_KEYS if reader.get(k) is not None]
    if len(given) > 1:
        raise LensConfigError(
            f"{' and '.join(given)} are mutually exclusive: give one input source (input_dir: a folder of "
            "images with one prompt, dataset: a Hugging Face dataset, manifest: a JSONL/CSV file)"
        )
    if not given and reader.get("prompt") is None and not log_named_modules:
        raise LensConfigError(
            "no input: give input_dir (with prompt), dataset, manifest, or a prompt alone "
            "(one text-only input)"
        )
    if "input_dir" in given and reader.get("prompt") is None:
        raise LensConfigError("input_dir needs a prompt: it is asked about every image of the folder")
    manifest = reader.text("manifest")
    if manifest is not None and Path(manifest).suffix.lower() not in MANIFEST_SUFFIXES:
        raise reader.fail("manifest", manifest, "a file ending in " + " or ".join(MANIFEST_SUFFIXES))


def _interventions(reader: _Reader, modules: tuple[ModuleEntry, ...]) -> tuple[dict[str, Any], ...]:
    """The checked ``interventions:`` entries, against the settings that store the clean run beside them."""
    entries = parse_interventions(reader.get("interventions"), reader.fail)
    if not entries:
        return entries
    if reader.get("output_format", COGLENS_FORMAT) != COGLENS_FORMAT:
        raise reader.fail("output_format", reader.get("output_format"),
                          f"{COGLENS_FORMAT} with interventions (VLM-Lens's table has no run column to tell the clean "
                          "rows from the intervened ones)")
    clean_run, run_name = reader.text("clean_run"), reader.text("run_name")
    if clean_run is not None and clean_run == run_name:
        raise reader.fail("clean_run", clean_run, "a name other than run_name (the intervened run's)")
    capture = reader.get("capture", "output")
    default_tokens = str(TokenSpec.parse(reader.get("tokens", "all")))

    def captured(module: str, io: str) -> str | None:
        if capture not in (io, "both"):
            return None
        for entry in modules:
            if entry.path is None and (entry.pattern == module or compile_pattern(entry.pattern)(module)):
                return str(entry.tokens) if entry.tokens is not None else default_tokens
        return None

    check_against_captures(entries, captured, reader.fail)
    return entries


def load_lens_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> LensConfig:
    """Read a lens config (VLM-Lens YAML accepted as is) and apply the given command-line `overrides`.

    `overrides` are keyed by config key (``model`` meaning ``model_path``, as ``--model``); None values are
    "not given" and leave the file's value alone. `path` may be None to build a config from overrides only.
    """
    where = str(path) if path is not None else "the command line"
    raw = _read_yaml(Path(path)) if path is not None else {}
    sources = {key: where for key in raw}
    _apply_overrides(raw, sources, overrides or {})
    reader = _Reader(raw, sources)

    model_options = reader.merged("model")
    dataset_options = reader.merged("dataset", unique=True)
    _warn_unknown(raw, model_options, dataset_options, where)

    log_named_modules = bool(reader.boolean("log_named_modules", False))
    model_path = reader.text("model_path")
    if model_path is None:
        raise LensConfigError(
            f"model_path is missing in {where}: give a checkpoint folder or hub id (or --model)"
        )
    modules = _module_entries(reader)
    if not modules and not log_named_modules:
        raise LensConfigError(
            f"modules is missing in {where}: list the module name patterns to capture "
            "(`coglens modules` lists the names)"
        )
    _inputs(reader, log_named_modules)
    device = reader.text("device")
    if device is not None and not _DEVICE.fullmatch(device):
        raise reader.fail("device", device, "one of: " + DEVICE_CHOICES)
    quantize = reader.choice("quantize", SCHEMES, None)
    quantize_vision = bool(reader.boolean("quantize_vision", False))
    if quantize_vision and quantize is None:
        raise reader.fail("quantize_vision", True, f"only together with quantize: {' | '.join(SCHEMES)}")
    adapter = reader.text("adapter")
    if adapter is not None and quantize is not None:
        raise reader.fail("adapter", adapter, "no quantize with it: merge the adapter first (coglens merge-adapter) "
                          "and quantize the merged checkpoint")
    pooling = _aliased(reader, "pooling", "pooling_method")
    if pooling == "None":  # VLM-Lens's README spells "no pooling" so (YAML reads it as a string)
        pooling = "none"
    if pooling is not None and pooling not in POOLING_CHOICES:
        key = "pooling" if reader.get("pooling") is not None else "pooling_method"
        raise reader.fail(key, pooling, "one of: " + " | ".join(POOLING_CHOICES))
    input_dir, manifest = reader.text("input_dir"), reader.text("manifest")
    interventions = _interventions(reader, modules)
    return LensConfig(
        model_path=model_path,
        modules=modules,
        architecture=reader.choice("architecture", VARIANTS, None),
        model=_model_options(reader, model_options),
        forward=_forward(reader),
        prompt=reader.text("prompt"),
        input_dir=None if input_dir is None else Path(input_dir),
        dataset=_dataset(reader, dataset_options),
        manifest=None if manifest is None else Path(manifest),
        output=_aliased(reader, "output", "output_db") or DEFAULT_OUTPUT,
        output_format=reader.choice("output_format", OUTPUT_FORMATS, COGLENS_FORMAT),
        device=device,
        dtype=reader.choice("dtype", DTYPE_CHOICES, AUTO_DTYPE),
        quantize=quantize,
        quantize_vision=quantize_vision,
        adapter=None if adapter is None else str(Path(adapter).expanduser().absolute()),
        store_dtype=reader.choice("store_dtype", STORE_DTYPES, MODEL_STORE_DTYPE),
        batch_size=_positive_int(reader, "batch_size", 1),
        run_name=reader.text("run_name"),
        overwrite=bool(reader.boolean("overwrite", False)),
        capture=reader.choice("capture", CAPTURE_CHOICES, "output"),
        tokens=_parsed(reader, "tokens", reader.get("tokens", "all"), TokenSpec.parse, TOKEN_CHOICES),
        pooling=pooling or "none",
        steps=reader.choice("steps", STEP_CHOICES, "prefill"),
        debug=bool(reader.boolean("debug", False)),
        log_named_modules=log_named_modules,
        interventions=interventions,
        clean_run=reader.text("clean_run"),
    )
