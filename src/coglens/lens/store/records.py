"""What a runner hands to a lens writer per batch: samples, and the activations captured for them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from coglens.lens.capture.choices import IO

TokenIds = Sequence[int] | torch.Tensor | np.ndarray


@dataclass
class SampleRecord:
    """One model input. `key` identifies it across reruns (resume, merge), e.g. the dataset row id or the
    image path; `token_type_ids` marks vision (1) and language (0) tokens as the model's processor made them."""

    key: str
    prompt: str
    image_path: str | None = None
    image_sha256: str | None = None
    label: str | None = None
    dataset_row_id: str | int | None = None
    input_ids: TokenIds | None = None
    token_type_ids: TokenIds | None = None
    generated_text: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # anything JSON-serialisable worth keeping


@dataclass
class ActivationRecord:
    """One captured tensor: `module`'s `io` at generation `step` (0 = prefill) for the sample `sample_key`,
    after token `selection` (e.g. "all", "last", "image") and `pooling` (None, "mean", "max")."""

    sample_key: str
    module: str
    tensor: torch.Tensor | np.ndarray
    io: IO = "output"
    step: int = 0
    selection: str = "all"
    pooling: str | None = None


@dataclass
class BatchResult:
    """What one batch produced: its samples, their activations, and the activations' size in bytes."""

    samples: list[SampleRecord]
    activations: list[ActivationRecord]
    nbytes: int = 0
