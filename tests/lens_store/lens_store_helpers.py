"""Sample and activation records with values the tests can predict."""

from __future__ import annotations

import torch

from coglens.lens import ActivationRecord, SampleRecord


def sample(key: str, label: str | None = None, n_tokens: int = 4) -> SampleRecord:
    return SampleRecord(
        key=key,
        prompt=f"prompt of {key}",
        image_path=f"/images/{key}.png",
        label=label,
        dataset_row_id=key,
        input_ids=list(range(100, 100 + n_tokens)),
        token_type_ids=[0] + [1] * (n_tokens - 2) + [0],
    )


def activation_value(key: str, module: str, step: int = 0) -> float:
    """A distinct, exactly representable number per (sample, module, step), to tell rows apart."""
    return int(key.lstrip("k")) * 10 + int(module[-1]) + step / 4


def batch(
    keys: list[str], modules: tuple[str, ...] = ("layer0", "layer1"), shape: tuple[int, ...] = (3,), **labels: str
) -> tuple[list[SampleRecord], list[ActivationRecord]]:
    """Samples `keys` with one activation per module: `shape` filled with `activation_value`."""
    samples = [sample(key, labels.get(key)) for key in keys]
    activations = [
        ActivationRecord(key, module, torch.full(shape, activation_value(key, module)))
        for key in keys
        for module in modules
    ]
    return samples, activations
