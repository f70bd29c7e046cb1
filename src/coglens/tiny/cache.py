"""A per-user cached copy of each tiny checkpoint, built once on first use."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from coglens.tiny.checkpoint import write_tiny_checkpoint
from coglens.tiny.variants import DEFAULT_TINY_VARIANT, get_tiny_variant

logger = logging.getLogger(__name__)

# Bump whenever write_tiny_checkpoint's output changes, so stale cached copies are not reused.
TINY_FORMAT_VERSION = 3


def cache_root() -> Path:
    """``$COGLENS_CACHE``, default ``~/.cache/coglens``."""
    return Path(os.environ.get("COGLENS_CACHE", "~/.cache/coglens")).expanduser()


def tiny_model_path(variant: str = DEFAULT_TINY_VARIANT) -> Path:
    """The folder of ``variant``'s tiny checkpoint (seed 0, float32), written on first use.

    The folder only ever appears complete: it is written into a temporary sibling and renamed into place, so
    concurrent callers either see nothing (and build) or a finished checkpoint; when two build at once, the
    first rename wins and the other copy is dropped.
    """
    get_tiny_variant(variant)  # unknown names fail before anything touches the cache
    target = cache_root() / "tiny" / f"{variant}-v{TINY_FORMAT_VERSION}"
    if not target.is_dir():
        _build_atomically(variant, target)
    logger.warning("coglens: using the built-in tiny %s model (random weights: its outputs are meaningless)", variant)
    return target


def _build_atomically(variant: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write_tiny_checkpoint(variant, staging)
        try:
            os.replace(staging, target)
        except OSError:
            if not target.is_dir():  # not a lost race: a real failure (permissions, disk) to report
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone after a successful rename; the loser's copy otherwise
