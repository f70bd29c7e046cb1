"""Pick the lens writer for a config's `output_format`."""

from __future__ import annotations

import os

from coglens.lens.store.coglens_db import LensStore
from coglens.lens.store.errors import FormatError
from coglens.lens.store.vlmlens_db import VlmLensStore
from coglens.lens.store.writer import LensWriter

WRITERS = {"coglens": LensStore, "vlm-lens": VlmLensStore}
OUTPUT_FORMATS: tuple[str, ...] = tuple(WRITERS)


def open_writer(target: str | os.PathLike[str], output_format: str = "coglens") -> LensWriter:
    """A writer for `target` (SQLite path or PostgreSQL URL) in `output_format` ("coglens" | "vlm-lens")."""
    try:
        writer = WRITERS[output_format]
    except KeyError:
        raise FormatError(
            f"output_format {output_format!r} is not supported; use one of {', '.join(OUTPUT_FORMATS)}"
        ) from None
    return writer(target)
