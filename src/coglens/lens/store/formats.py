"""The formats a lens run is written in (a config's ``output_format`` and ``store_dtype``) and exported to
(``coglens export``).

Light to import (no SQLAlchemy, numpy or torch): the ``coglens`` command checks an export's suffix against
:data:`EXPORT_FORMATS` before anything heavy loads.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from coglens.lens.store.errors import FormatError
from coglens.modeling.dtypes import FLOAT_DTYPES

if TYPE_CHECKING:
    from coglens.lens.store.writer import LensWriter

COGLENS_FORMAT = "coglens"  # CogLens's own schema (what `coglens.lens.open` reads)
VLMLENS_FORMAT = "vlm-lens"  # VLM-Lens's `tensors` table, exactly
OUTPUT_FORMATS: tuple[str, ...] = (COGLENS_FORMAT, VLMLENS_FORMAT)

MODEL_STORE_DTYPE = "model"  # `store_dtype: model`: activations keep the model's own dtype
STORE_DTYPES: tuple[str, ...] = (MODEL_STORE_DTYPE, *FLOAT_DTYPES)

# export file suffix -> format (`coglens.lens.store.export`)
EXPORT_FORMATS = {".npz": "npz", ".safetensors": "safetensors", ".parquet": "parquet"}


def open_writer(target: str | os.PathLike[str], output_format: str = COGLENS_FORMAT) -> LensWriter:
    """A writer for `target` (SQLite path or PostgreSQL URL) in `output_format` ("coglens" | "vlm-lens")."""
    if output_format == COGLENS_FORMAT:
        from coglens.lens.store.coglens_db import LensStore

        return LensStore(target)
    if output_format == VLMLENS_FORMAT:
        from coglens.lens.store.vlmlens_db import VlmLensStore

        return VlmLensStore(target)
    raise FormatError(f"output_format {output_format!r} is not supported; use one of {', '.join(OUTPUT_FORMATS)}")
