"""Pick the lens writer for a config's `output_format`."""

from __future__ import annotations

import os

from coglens.lens.errors import FormatError
from coglens.lens.records import LensWriter
from coglens.lens.store import LensStore
from coglens.lens.vlmlens_db import VlmLensStore

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
