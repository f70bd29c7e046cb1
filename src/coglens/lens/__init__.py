"""Look inside CogVLM models: capture module activations, store them, read them back (`coglens.lens.open`)."""

from coglens.lens.codec import DTYPE_NAMES, decode_array, decode_tensor, encode_tensor
from coglens.lens.config import LensConfig, LensConfigError, load_lens_config
from coglens.lens.errors import (
    ActivationNotFoundError,
    ActivationShapeError,
    BatchError,
    FormatError,
    LensDatabaseError,
    LensStoreError,
    RunMismatchError,
    RunNotFoundError,
    UnsupportedDtypeError,
)
from coglens.lens.export import export
from coglens.lens.merge import MergeReport, merge_databases
from coglens.lens.reader import LensDB, open
from coglens.lens.records import ActivationRecord, LensWriter, SampleRecord
from coglens.lens.runner import LensSummary, run_lens
from coglens.lens.store import LensStore
from coglens.lens.vlmlens_db import VlmLensStore
from coglens.lens.writers import OUTPUT_FORMATS, open_writer

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
