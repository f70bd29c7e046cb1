"""The ``interventions:`` section of a lens config: checked when the config loads, built into edits when the model is.

```yaml
interventions:
  - ablate: model.layers.1       # a module name or pattern; tokens / io / steps as for any edit
    tokens: image
    mode: mean                   # zero | mean (over a stored run) | resample (another sample of a stored run)
  - steer: model.layers.1
    tokens: last
    alpha: 4
    vector: steer.safetensors    # or: mean_difference: {positive: red, negative: blue}
  - patch: model.layers.0
    tokens: image
    source: {image: corrupted.png, prompt: What is it?}   # computed now; or from_run + sample
  - knockout: {queries: all, keys: image, layers: [0, 1], heads: [0]}
```

``mean``, ``resample``, ``mean_difference`` and ``patch`` with ``sample`` read a stored run: ``from_run`` (default:
the config's clean run, extracted first) in ``from_db`` (default: the config's output). A run with interventions
stores the same inputs twice: without them under the clean run's name, then with them under its own, so
:func:`coglens.lens.intervene.effects` reads both back per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from coglens.lens.capture.select import SelectionError, TokenSpec
from coglens.lens.intervene.edits import ABLATIONS, STEPS, Ablate, Edit, Knockout, Patch, Steer

KINDS = ("ablate", "steer", "patch", "knockout")
_COMMON = ("tokens", "io", "steps")
_KEYS = {
    "ablate": (*_COMMON, "mode", "from_run", "from_db", "sample"),
    "steer": (*_COMMON, "alpha", "vector", "key", "mean_difference", "from_db"),
    "patch": (*_COMMON, "source", "from_run", "from_db", "sample"),
    "knockout": ("queries", "keys", "layers", "heads", "steps"),
}
Fail = Callable[[str, Any, str], Exception]


def parse_interventions(value: Any, fail: Fail) -> tuple[dict[str, Any], ...]:
    """The config's list, each entry checked and written out in full (``{"kind": ..., settings}``, JSON-friendly,
    paths absolute): what the run records and compares on resume."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise fail("interventions", value, f"a list of one-key maps: {', '.join(KINDS)}")
    return tuple(_entry(item, f"interventions[{i}]", fail) for i, item in enumerate(value))


def _entry(item: Any, key: str, fail: Fail) -> dict[str, Any]:
    kinds = [k for k in KINDS if isinstance(item, Mapping) and k in item]
    if len(kinds) != 1:
        raise fail(key, item, f"a map with exactly one of {', '.join(KINDS)}")
    kind = kinds[0]
    head = item[kind]
    settings = dict(item)
    del settings[kind]
    if kind == "knockout":
        if head is not None and not isinstance(head, Mapping):
            raise fail(f"{key}.knockout", head, "a map of queries, keys, layers, heads, steps (or nothing)")
        settings = {**dict(head or {}), **settings}
    elif not isinstance(head, str) or not head:
        raise fail(f"{key}.{kind}", head, "the module name or pattern to change")
    unknown = sorted(set(settings) - set(_KEYS[kind]))
    if unknown:
        raise fail(key, item, f"only the keys {', '.join(_KEYS[kind])} with {kind} (unknown: {unknown})")
    out: dict[str, Any] = {"kind": kind} if kind == "knockout" else {"kind": kind, "module": head}
    for name in ("tokens", "queries", "keys"):
        if name in _KEYS[kind]:
            default = {"queries": "all", "keys": "image"}.get(name, "all")
            out[name] = _tokens(settings.get(name, default), f"{key}.{name}", fail)
    steps = settings.get("steps", "prefill" if kind == "patch" else "all")
    if steps not in STEPS:
        raise fail(f"{key}.steps", steps, "one of: " + " | ".join(STEPS))
    out["steps"] = steps
    if kind != "knockout":
        io = settings.get("io", "output")
        if io not in ("output", "input"):
            raise fail(f"{key}.io", io, "output or input")
        out["io"] = io
    for name in ("from_run", "sample", "key"):
        if name in settings:
            out[name] = _text(settings[name], f"{key}.{name}", fail)
    if "from_db" in settings:
        out["from_db"] = _text(settings["from_db"], f"{key}.from_db", fail)
    getattr(_Check, kind)(settings, out, key, fail)
    return out


class _Check:
    """Kind-specific settings, checked and copied into ``out``."""

    @staticmethod
    def ablate(settings: Mapping[str, Any], out: dict[str, Any], key: str, fail: Fail) -> None:
        mode = settings.get("mode", "zero")
        if mode not in ABLATIONS:
            raise fail(f"{key}.mode", mode, "one of: " + " | ".join(ABLATIONS))
        out["mode"] = mode
        if mode == "resample" and "sample" not in settings:
            raise fail(key, dict(settings), "sample: the key of the stored sample whose activation goes in")
        if mode != "resample" and "sample" in settings:
            raise fail(f"{key}.sample", settings["sample"], "only with mode: resample")

    @staticmethod
    def steer(settings: Mapping[str, Any], out: dict[str, Any], key: str, fail: Fail) -> None:
        alpha = settings.get("alpha", 1.0)
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha != alpha:
            raise fail(f"{key}.alpha", alpha, "a number")
        out["alpha"] = float(alpha)
        vector, difference = settings.get("vector"), settings.get("mean_difference")
        if (vector is None) == (difference is None):
            raise fail(key, dict(settings), "exactly one of vector (a file) or mean_difference "
                                            "({positive: LABEL, negative: LABEL})")
        if vector is not None:
            path = Path(_text(vector, f"{key}.vector", fail)).expanduser()
            if not path.is_file():
                raise fail(f"{key}.vector", vector, "an existing .safetensors, .npy or .pt file")
            out["vector"] = str(path.absolute())
            return
        if not (isinstance(difference, Mapping) and isinstance(difference.get("positive"), str)
                and isinstance(difference.get("negative"), str)
                and set(difference) <= {"positive", "negative", "run"}):
            raise fail(f"{key}.mean_difference", difference, "{positive: LABEL, negative: LABEL, run: RUN (optional)}")
        out["mean_difference"] = dict(difference)

    @staticmethod
    def patch(settings: Mapping[str, Any], out: dict[str, Any], key: str, fail: Fail) -> None:
        source = settings.get("source")
        if (source is None) == ("sample" not in settings):
            raise fail(key, dict(settings), "exactly one of source ({prompt: TEXT, image: FILE}: computed now) or "
                                            "sample (a stored sample, with from_run)")
        if source is not None:
            if not (isinstance(source, Mapping) and isinstance(source.get("prompt"), str)
                    and set(source) <= {"prompt", "image"}):
                raise fail(f"{key}.source", source, "{prompt: TEXT, image: FILE (optional)}")
            image = source.get("image")
            if image is not None and not Path(str(image)).expanduser().is_file():
                raise fail(f"{key}.source.image", image, "an existing image file")
            out["source"] = {"prompt": source["prompt"],
                             **({"image": str(Path(str(image)).expanduser().absolute())} if image else {})}

    @staticmethod
    def knockout(settings: Mapping[str, Any], out: dict[str, Any], key: str, fail: Fail) -> None:
        for name in ("layers", "heads"):
            values = settings.get(name)
            if values is not None and not (isinstance(values, list) and values and all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)):
                raise fail(f"{key}.{name}", values, "a list of indices (or leave it out: all)")
            out[name] = values


def _tokens(value: Any, key: str, fail: Fail) -> str:
    try:
        return str(TokenSpec.parse(value))
    except SelectionError as error:
        raise fail(key, value, str(error)) from None


def _text(value: Any, key: str, fail: Fail) -> str:
    if not isinstance(value, str) or not value:
        raise fail(key, value, "a non-empty string")
    return value


def check_targets(entries: tuple[Mapping[str, Any], ...], model: Any) -> None:
    """Every module, layer and head the entries name exists in ``model``: checked before any run is written."""
    from coglens.lens.intervene.context import Intervene

    placeholder = torch.zeros(())
    Intervene(model, [Knockout(queries=e["queries"], keys=e["keys"], layers=e.get("layers"), heads=e.get("heads"))
                      if e["kind"] == "knockout" else Steer(e["module"], placeholder) for e in entries])


def reads_stored(entry: Mapping[str, Any]) -> bool:
    """Whether the entry's value comes from a stored run."""
    return entry.get("mode") in ("mean", "resample") or "mean_difference" in entry or "sample" in entry


def needs_stored_values(entries: tuple[Mapping[str, Any], ...]) -> bool:
    return any(reads_stored(entry) for entry in entries)


def check_against_captures(entries: tuple[Mapping[str, Any], ...], captured: Callable[[str, str], str | None],
                           fail: Fail) -> None:
    """Values read from the clean run are the module's activations at the tokens that run stores: they must be
    the tokens the edit changes. ``captured(module, io)`` gives the token selection the config stores it at."""
    for i, entry in enumerate(entries):
        if not reads_stored(entry) or "from_run" in entry or "from_db" in entry:
            continue  # nothing stored, or another run: its settings are its own
        stored = captured(entry["module"], entry["io"])
        if stored != entry["tokens"]:
            where = (f"stores it at tokens {stored}" if stored is not None else
                     f"does not capture it ({entry['io']})")
            raise fail(f"interventions[{i}]", entry["module"],
                       f"a module whose value comes from the clean run at the edit's tokens ({entry['tokens']}), but "
                       f"this config {where}; add a modules entry {{name: {entry['module']}, tokens: "
                       f"{entry['tokens']}}} (capture: {entry['io']}) or give from_run")


def build_edits(entries: tuple[Mapping[str, Any], ...], pipeline: Any, *, output: str,
                clean_run: str, template: str | None = None) -> list[Edit]:
    """The edits of a checked ``interventions:`` list, their values read from stored runs, files or the model."""
    from coglens.lens.intervene.sources import (
        capture,
        load_vector,
        mean_difference,
        stored_activation,
        stored_mean,
    )

    edits: list[Edit] = []
    for entry in entries:
        kind, db = entry["kind"], entry.get("from_db", output)
        run = entry.get("from_run", clean_run)
        common = {"steps": entry["steps"]}
        if kind == "knockout":
            edits.append(Knockout(queries=entry["queries"], keys=entry["keys"], layers=entry.get("layers"),
                                  heads=entry.get("heads"), **common))
            continue
        module, where = entry["module"], {"tokens": entry["tokens"], "io": entry["io"], **common}
        if kind == "ablate":
            mode = entry["mode"]
            value = None
            if mode == "mean":
                value = stored_mean(db, module, run=run, io=entry["io"])
            elif mode == "resample":
                value = stored_activation(db, module, entry["sample"], run=run, io=entry["io"])
            edits.append(Ablate(module, mode=mode, value=value, **where))
        elif kind == "steer":
            if "vector" in entry:
                vector = load_vector(entry["vector"], entry.get("key"))
            else:
                groups = entry["mean_difference"]
                vector = mean_difference(db, module, "label", groups["positive"], groups["negative"],
                                         run=groups.get("run", run), io=entry["io"])
            edits.append(Steer(module, vector, alpha=entry["alpha"], **where))
        else:
            if "source" in entry:
                source = entry["source"]
                images = [source["image"]] if "image" in source else None
                value = capture(pipeline, source["prompt"], module, tokens=entry["tokens"], io=entry["io"],
                                images=images, template=template)
            else:
                value = stored_activation(db, module, entry["sample"], run=run, io=entry["io"])
            edits.append(Patch(module, value, **where))
    return edits
