"""When a stored run may be resumed (or merged into): its rows must all be made the same way.

Rows of one run are meant to be compared with each other, so a run is never continued with another model (path or
config hash), nor, for a run written by the lens runner, with other capture settings (modules, tokens, pooling,
steps, dtypes, prompt...): either would mix two kinds of rows in one run. Other config changes (batch size,
inputs...) only warn.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from coglens.lens.store.errors import RunMismatchError, RunSettingsMismatchError

logger = logging.getLogger(__name__)

# What a run's rows depend on, beyond the model itself (keys of the runner's config, `model:` options included).
CAPTURE_SETTINGS = (
    "modules",
    "capture",
    "tokens",
    "pooling",
    "steps",
    "forward",
    "store_dtype",
    "prompt",
    "model_dtype",
    "quantize",  # quantized and full-precision activations must not mix in one run
    "quantize_vision",
    "adapter",  # an adapter changes every activation downstream of the modules it adapts
    "interventions",  # so do interventions
    "template_version",
    "tokenizer_path",
)


def check_same_model(found: Mapping[str, Any], values: Mapping[str, Any], *, where: str) -> None:
    """Refuse to mix activations of different models into one run."""
    for column in ("model_path", "model_config_hash"):
        if values[column] is not None and found[column] is not None and values[column] != found[column]:
            raise RunMismatchError(
                f"{where} was made with {column}={found[column]!r}, not {values[column]!r}; "
                "use another run name, or overwrite=True to replace it"
            )


def check_resumable(found: Mapping[str, Any], values: Mapping[str, Any], *, where: str) -> None:
    """Refuse to resume the stored run `found` (a runs row) with `values` (its new config text and model)."""
    _check_capture_settings(found["config"], values["config"], where=where)
    check_same_model(found, values, where=where)
    if values["config"] is not None and found["config"] != values["config"]:
        logger.warning("resuming %s with a config that differs from its first one", where)


def _check_capture_settings(stored_text: str | None, config_text: str | None, *, where: str) -> None:
    before, now = _capture_settings(stored_text), _capture_settings(config_text)
    if before is None or now is None:
        return  # a config not written by the runner: nothing to compare
    changed = [key for key in CAPTURE_SETTINGS if before[key] != now[key]]
    if changed:
        details = "; ".join(f"{key}: {before[key]!r} -> {now[key]!r}" for key in changed)
        raise RunSettingsMismatchError(
            f"{where} was extracted with other settings ({details}); resuming would mix both kinds of rows in "
            "one run. Use --overwrite to start it over, or --run-name NAME for a new run next to it"
        )


def _capture_settings(config_text: str | None) -> dict[str, Any] | None:
    """The capture settings of a config stored as JSON (as the runner stores it); None for any other config."""
    try:
        settings = json.loads(config_text) if config_text else None
    except json.JSONDecodeError:
        return None
    if not isinstance(settings, dict):
        return None
    flat = {**settings, **dict(settings.get("model") or {})}
    if flat.get("steps") != "all":
        flat["forward"] = None  # generation options only matter when generating
    return {key: flat.get(key) for key in CAPTURE_SETTINGS}
