"""Tiny, randomly initialised CogVLM checkpoints in THUDM's folder layout, so everything runs offline on a CPU.

``write_tiny_checkpoint("cogvlm2", "out/")`` writes one; ``tiny_model_path("cogvlm2")`` returns a cached copy.
Their outputs are meaningless: they exist to exercise loading, generation, serving and lenses without real
weights.

The names below load on first use (PEP 562): ``coglens.tiny.variants`` stays light to import.
"""

from coglens._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".cache": ("tiny_model_path",),
    ".checkpoint": ("TinyDtypeError", "TinyOutputDirError", "write_tiny_checkpoint"),
    ".variants": ("DEFAULT_TINY_MODEL", "DEFAULT_TINY_VARIANT", "TINY_PREFIX", "TINY_VARIANTS",
                  "UnknownTinyVariantError"),
})
