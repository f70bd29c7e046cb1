"""Look inside CogVLM models: capture module activations, store them, read them back (`coglens.lens.open`).

The rooms: ``capture`` (hooks on a model's modules, token selection and pooling, one batch through a forward pass
or a generation), ``run`` (a config's inputs through the model into a database: the ``coglens extract`` job),
``store`` (the lens database: writers, reader, export, merge) and ``interpret`` (tools that explain what a
model attends to, such as ``coglens explain``'s attention maps).
"""

from coglens.lens.run.config import LensConfig, LensConfigError, load_lens_config
from coglens.lens.run.progress import LensSummary
from coglens.lens.run.runner import run_lens
from coglens.lens.store.codec import DTYPE_NAMES, decode_array, decode_tensor, encode_tensor
from coglens.lens.store.coglens_db import LensStore
from coglens.lens.store.errors import (
    ActivationNotFoundError,
    ActivationShapeError,
    BatchError,
    FormatError,
    LensDatabaseError,
    LensStoreError,
    RunMismatchError,
    RunNotFoundError,
    RunSettingsMismatchError,
    UnsupportedDtypeError,
)
from coglens.lens.store.export import export
from coglens.lens.store.formats import OUTPUT_FORMATS, open_writer
from coglens.lens.store.merge import MergeReport, merge_databases
from coglens.lens.store.reader import LensDB, open
from coglens.lens.store.records import ActivationRecord, SampleRecord
from coglens.lens.store.vlmlens_db import VlmLensStore
from coglens.lens.store.writer import LensWriter

__all__ = [
    "DTYPE_NAMES",
    "OUTPUT_FORMATS",
    "ActivationNotFoundError",
    "ActivationRecord",
    "ActivationShapeError",
    "BatchError",
    "FormatError",
    "LensDB",
    "LensConfig",
    "LensConfigError",
    "LensDatabaseError",
    "LensStore",
    "LensStoreError",
    "LensSummary",
    "LensWriter",
    "MergeReport",
    "RunMismatchError",
    "RunNotFoundError",
    "RunSettingsMismatchError",
    "SampleRecord",
    "UnsupportedDtypeError",
    "VlmLensStore",
    "decode_array",
    "decode_tensor",
    "encode_tensor",
    "export",
    "load_lens_config",
    "merge_databases",
    "open",
    "open_writer",
    "run_lens",
]
