"""Records -> table rows (validated and encoded before any transaction opens), and token ids back."""

from __future__ import annotations

import json
import numbers
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import torch

from coglens.lens.capture.choices import IO_VALUES
from coglens.lens.store.codec import encode_tensor
from coglens.lens.store.errors import BatchError
from coglens.lens.store.records import ActivationRecord, SampleRecord, TokenIds
from coglens.modeling.routing import VISION_TOKEN_TYPE

# Stored widths: int32 holds every vocabulary index; token types are 0 (language) / 1 (vision) codes.
_TOKEN_ID_DTYPE = np.dtype("<i4")
_TOKEN_TYPE_DTYPE = np.dtype("|u1")


def _token_array(values: TokenIds, what: str, key: str, dtype: np.dtype) -> np.ndarray:
    array = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values)
    if array.ndim != 1:
        raise BatchError(f"{what} of sample {key!r} must be 1-D (one sequence, no batch dim), got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise BatchError(f"{what} of sample {key!r} must be integers, got dtype {array.dtype}")
    limits = np.iinfo(dtype)
    if array.size and (array.min() < 0 or array.max() > limits.max):
        raise BatchError(f"{what} of sample {key!r} must lie in [0, {limits.max}], got {array.min()}..{array.max()}")
    return array.astype(dtype)


def sample_row(record: SampleRecord, written_at: datetime) -> dict[str, Any]:
    """The `samples` row of `record` (without run_id)."""
    ids = None if record.input_ids is None else _token_array(record.input_ids, "input_ids", record.key, _TOKEN_ID_DTYPE)
    types = (
        None
        if record.token_type_ids is None
        else _token_array(record.token_type_ids, "token_type_ids", record.key, _TOKEN_TYPE_DTYPE)
    )
    if ids is not None and types is not None and len(ids) != len(types):
        raise BatchError(
            f"sample {record.key!r} has {len(ids)} input_ids but {len(types)} token_type_ids; pass both for the "
            "same sequence"
        )
    try:
        extra = json.loads(json.dumps(dict(record.extra))) if record.extra else None
    except TypeError as error:
        raise BatchError(f"extra of sample {record.key!r} must be JSON-serialisable: {error}") from None
    lengths = [len(a) for a in (ids, types) if a is not None]
    return {
        "sample_key": str(record.key),
        "image_path": record.image_path,
        "image_sha256": record.image_sha256,
        "prompt": record.prompt,
        "label": None if record.label is None else str(record.label),
        "dataset_row_id": None if record.dataset_row_id is None else str(record.dataset_row_id),
        "input_ids": None if ids is None else ids.tobytes(),
        "token_type_ids": None if types is None else types.tobytes(),
        "num_tokens": lengths[0] if lengths else None,
        "num_image_tokens": None if types is None else int((types == VISION_TOKEN_TYPE).sum()),
        "generated_text": record.generated_text,
        "extra": extra,
        "written_at": written_at,
    }


def check_batch(samples: Sequence[SampleRecord], activations: Sequence[ActivationRecord]) -> None:
    """Raise `BatchError` for duplicate samples or activations, bad io/step, and activations of samples that
    are not in the batch (a sample is written together with all its activations)."""
    keys: set[str] = set()
    for sample in samples:
        if sample.key in keys:
            raise BatchError(f"sample key {sample.key!r} appears twice in one batch; keys must be unique per run")
        keys.add(sample.key)
    seen: set[tuple[str, str, str, int]] = set()
    for record in activations:
        where = f"activation of module {record.module!r} for sample {record.sample_key!r}"
        if record.sample_key not in keys:
            raise BatchError(
                f"{where}: that sample is not in this batch; pass its SampleRecord in the same write_batch call "
                "(a sample and all its activations are written together)"
            )
        if record.io not in IO_VALUES:
            raise BatchError(f"{where}: io={record.io!r}; use 'output' or 'input'")
        if isinstance(record.step, bool) or not isinstance(record.step, numbers.Integral) or record.step < 0:
            raise BatchError(f"{where}: step={record.step!r}; use 0 for the prefill and n for decoding step n")
        identity = (record.sample_key, record.module, record.io, int(record.step))
        if identity in seen:
            raise BatchError(f"{where}: io={record.io!r} step={record.step} is given twice in one batch")
        seen.add(identity)


def activation_rows_by_sample(
    samples: Sequence[SampleRecord], activations: Sequence[ActivationRecord]
) -> dict[str, list[dict[str, Any]]]:
    """Checked and encoded `activations` rows (without run/sample ids), grouped by sample key; every key of
    `samples` is present."""
    check_batch(samples, activations)
    grouped: dict[str, list[dict[str, Any]]] = {sample.key: [] for sample in samples}
    for record in activations:
        encoded = encode_tensor(record.tensor)
        grouped[record.sample_key].append(
            {
                "module": record.module,
                "io": record.io,
                "step": int(record.step),
                "selection": record.selection,
                "pooling": record.pooling,
                "shape": list(encoded.shape),
                "dtype": encoded.dtype,
                "data": encoded.data,
            }
        )
    return grouped


def decode_token_ids(data: bytes | None) -> np.ndarray | None:
    return None if data is None else np.frombuffer(data, dtype=_TOKEN_ID_DTYPE).astype(np.int64)


def decode_token_types(data: bytes | None) -> np.ndarray | None:
    return None if data is None else np.frombuffer(data, dtype=_TOKEN_TYPE_DTYPE).copy()
