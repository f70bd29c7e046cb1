"""Errors raised by the lens's storage layer: each names what was wrong and what to do about it."""

from __future__ import annotations


class LensStoreError(Exception):
    """Base class of every storage error, so a CLI can print these cleanly and let real bugs trace back."""


class LensDatabaseError(LensStoreError, ValueError):
    """The database cannot be opened, or holds something other than a CogLens lens database."""


class RunNotFoundError(LensStoreError, LookupError):
    """A run name or id that the database does not hold, or an ambiguous `run=None`."""


class RunMismatchError(LensStoreError, ValueError):
    """Resuming or merging into a run that was made with a different model."""


class RunSettingsMismatchError(RunMismatchError):
    """Resuming a run with capture settings that differ from the ones its stored rows were made with."""


class ActivationNotFoundError(LensStoreError, LookupError):
    """A module, io/step combination or sample key with no stored activation."""


class ActivationShapeError(LensStoreError, ValueError):
    """Activations that cannot be stacked into one array because their shapes or dtypes differ."""


class BatchError(LensStoreError, ValueError):
    """A `write_batch` call whose records are inconsistent (duplicates, activations of unknown samples)."""


class UnsupportedDtypeError(LensStoreError, TypeError):
    """A tensor dtype the codec cannot store as raw bytes, or a stored dtype name it does not know."""


class FormatError(LensStoreError, ValueError):
    """An unknown output/export format, an export path whose format cannot be inferred, or data the chosen
    format cannot hold."""


class LensWriteError(LensStoreError):
    """Writing to the database failed (disk full, database locked, connection lost); `full` says whether it was
    for want of space. The rows written before stay stored."""

    def __init__(self, message: str, *, full: bool = False) -> None:
        super().__init__(message)
        self.full = full


class RunLockedError(LensStoreError):
    """Another process is writing the same run of the same database right now."""


class RunStoppedError(LensStoreError):
    """A lens run that stopped before the end (a signal, a write failure): the message says what was kept and how
    to resume; `exit_code` is the one a command should end with (130 for SIGINT, 143 for SIGTERM, else 1)."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
