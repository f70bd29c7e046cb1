"""Look inside CogVLM models: capture module activations, store them, read them back (`coglens.lens.open`).

The rooms: ``capture`` (hooks on a model's modules, token selection and pooling, one batch through a forward pass
or a generation), ``run`` (a config's inputs through the model into a database: the ``coglens extract`` job),
``store`` (the lens database: writers, reader, export, merge) and ``interpret`` (tools that explain what a
model attends to, such as ``coglens explain``'s attention maps).

The names below load on first use (PEP 562): ``coglens.lens.store.formats`` stays light to import.
"""

from coglens._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".run.config": ("LensConfig", "LensConfigError", "load_lens_config"),
    ".run.progress": ("LensSummary",),
    ".run.runner": ("run_lens",),
    ".store.codec": ("DTYPE_NAMES", "decode_array", "decode_tensor", "encode_tensor"),
    ".store.coglens_db": ("LensStore",),
    ".store.errors": ("ActivationNotFoundError", "ActivationShapeError", "BatchError", "FormatError",
                      "LensDatabaseError", "LensStoreError", "RunMismatchError", "RunNotFoundError",
                      "RunSettingsMismatchError", "UnsupportedDtypeError"),
    ".store.export": ("export",),
    ".store.formats": ("OUTPUT_FORMATS", "open_writer"),
    ".store.merge": ("MergeReport", "merge_databases"),
    ".store.reader": ("LensDB", "open"),
    ".store.records": ("ActivationRecord", "SampleRecord"),
    ".store.vlmlens_db": ("VlmLensStore",),
    ".store.writer": ("LensWriter",),
})
