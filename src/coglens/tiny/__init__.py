"""Tiny, randomly initialised CogVLM checkpoints in THUDM's folder layout, so everything runs offline on a CPU.

``write_tiny_checkpoint("cogvlm2", "out/")`` writes one; ``tiny_model_path("cogvlm2")`` returns a cached copy.
Their outputs are meaningless: they exist to exercise loading, generation, serving and lenses without real
weights.
"""

from coglens.tiny.cache import tiny_model_path
from coglens.tiny.checkpoint import TinyDtypeError, TinyOutputDirError, write_tiny_checkpoint
from coglens.tiny.variants import TINY_VARIANTS, UnknownTinyVariantError

__all__ = [
    "TINY_VARIANTS",
    "TinyDtypeError",
    "TinyOutputDirError",
    "UnknownTinyVariantError",
    "tiny_model_path",
    "write_tiny_checkpoint",
]
