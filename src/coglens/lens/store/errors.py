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
