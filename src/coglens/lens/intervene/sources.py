"""Where intervention values come from: a stored lens run, a vector file, or another input run now.

- :func:`stored_mean`: a module's mean activation over a run (mean ablation), over samples and stored tokens;
- :func:`stored_activation`: one sample's stored activation (resample ablation, patching from a run);
- :func:`mean_difference`: mean(group A) - mean(group B) by label (the usual steering vector);
- :func:`load_vector`: a tensor from ``.safetensors``, ``.npy`` or ``.pt`` (loaded with ``weights_only``);
- :func:`capture`: a module's activation on another input, computed now (activation patching on the fly).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .layout import InterventionError


def _open(db: Any) -> Any:
    from coglens.lens.store.reader import LensDB
    from coglens.lens.store.reader import open as open_db

    return db if isinstance(db, LensDB) else open_db(db)


def _features(array: np.ndarray, dims: int) -> torch.Tensor:
    """Every stored vector of one sample as rows: [positions, *features] (a pooled sample is one row)."""
    tensor = torch.as_tensor(np.asarray(array, dtype=np.float32))
    return tensor.reshape(-1, *tensor.shape[tensor.dim() - dims:]) if dims else tensor.reshape(-1)


def stored_mean(db: Any, module: str, *, run: str | int | None = None, label: str | Sequence[str] | None = None,
                io: str = "output", step: int = 0, feature_dims: int = 1) -> torch.Tensor:
    """The mean of ``module``'s stored activations over every sample (of ``label``) and every stored token: one
    vector of the module's feature shape (its last ``feature_dims`` axes)."""
    total, count = None, 0
    for arrays, _ in _open(db).iter_activations(module, run=run, label=label, io=io, step=step, stack=False):
        for array in arrays:
            rows = _features(array, feature_dims).double()
            total = rows.sum(0) if total is None else total + rows.sum(0)
            count += rows.shape[0]
    if total is None or count == 0:
        raise InterventionError(f"no stored activations of {module} ({io}, step {step})"
                                + (f" with label {label!r}" if label is not None else "") + " to average")
    return (total / count).float()


def stored_activation(db: Any, module: str, sample: str, *, run: str | int | None = None, io: str = "output",
                      step: int = 0) -> torch.Tensor:
    """Sample ``sample``'s stored activation of ``module`` (as stored: [positions, hidden] for a token
    selection, [hidden] when pooled)."""
    arrays, _ = _open(db).activations(module, run=run, samples=[sample], io=io, step=step)
    return torch.as_tensor(np.asarray(arrays[0], dtype=np.float32))


def mean_difference(db: Any, module: str, label_column: str, positive: str, negative: str, *,
                    run: str | int | None = None, io: str = "output", step: int = 0) -> torch.Tensor:
    """mean(activations of samples labelled ``positive``) - mean(``negative``): a steering vector that moves
    the model from one group towards the other. ``label_column`` must be the run's label column (``label``)."""
    if label_column != "label":
        raise InterventionError(f"label column {label_column!r}: lens runs store one label column, 'label'")
    return (stored_mean(db, module, run=run, label=positive, io=io, step=step)
            - stored_mean(db, module, run=run, label=negative, io=io, step=step))


def load_vector(path: str | os.PathLike[str], key: str | None = None) -> torch.Tensor:
    """A tensor from a file: ``.safetensors`` (``key``, or its only tensor), ``.npy``, or ``.pt``/``.pth``
    (``torch.load(weights_only=True)``: never unpickles code)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise InterventionError(f"vector file {str(file)!r} does not exist")
    suffix = file.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(file))
        if key is None and len(tensors) != 1:
            raise InterventionError(f"{file} holds {len(tensors)} tensors ({', '.join(sorted(tensors))}); name one "
                                    "with key")
        name = key if key is not None else next(iter(tensors))
        if name not in tensors:
            raise InterventionError(f"{file} has no tensor {name!r}; it has {', '.join(sorted(tensors))}")
        return tensors[name].float()
    if suffix == ".npy":
        return torch.as_tensor(np.load(file, allow_pickle=False)).float()
    if suffix in (".pt", ".pth"):
        loaded = torch.load(file, map_location="cpu", weights_only=True)
        if isinstance(loaded, dict):
            if key is None and len(loaded) != 1:
                raise InterventionError(f"{file} holds {len(loaded)} entries; name one with key")
            loaded = loaded[key if key is not None else next(iter(loaded))]
        if not isinstance(loaded, torch.Tensor):
            raise InterventionError(f"{file} does not hold a tensor")
        return loaded.float()
    raise InterventionError(f"vector file {file}: use .safetensors, .npy or .pt")


def capture(pipeline: Any, query: str, module: str, *, tokens: Any = "all", io: str = "output",
            **inputs: Any) -> torch.Tensor:
    """``module``'s activation at ``tokens`` on ``query`` (with ``images=``, ``history=``, ``template=`` as
    :meth:`~coglens.pipeline.Pipeline.build_inputs` takes them): [n_selected, *features], for :class:`~.edits.Patch`.
    """
    from coglens.lens.capture.trace import Trace, token_reducer

    built = pipeline.build_inputs(query, **inputs)
    ids, types = built["input_ids"][None], built["token_type_ids"][None]
    reduce = token_reducer(token_type_ids=types, attention_mask=None, tokens=tokens)
    device = pipeline.model.get_input_embeddings().weight.device
    with torch.no_grad(), Trace(pipeline.model, [module], capture=io, steps="prefill", reduce=reduce) as trace:
        pipeline.model(input_ids=ids.to(device), token_type_ids=types.to(device),
                       images=[list(built["images"] or [])])
    value = trace.get(module if io == "output" else f"{module}.input")
    assert isinstance(value, list)
    if value[0] is None:
        raise InterventionError(f"capture {module}: the selection {tokens!r} picks no token of this input")
    return value[0]
