"""The dtype names users type: ``--dtype``, and a lens config's ``dtype`` and ``store_dtype``.

Light to import (no torch): the ``coglens`` command checks ``--dtype`` with :func:`dtype_name` before torch loads;
:func:`coglens.modeling.loading.resolve_dtype` turns a name into torch's dtype.
"""

from __future__ import annotations

AUTO_DTYPE = "auto"  # the checkpoint's own dtype
FLOAT_DTYPES = ("float32", "float16", "bfloat16")  # what a model runs in, and what the lens stores activations in
DTYPE_CHOICES = (AUTO_DTYPE, *FLOAT_DTYPES)  # what a lens config's `dtype` takes
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
# torch's other names of floating-point dtypes; which float8_* / float4_* exist depends on torch's version
_OTHER_FLOAT_NAMES = ("float", "float64", "double")
_FLOAT_FAMILIES = ("float8_", "float4_")


def dtype_name(name: str) -> str:
    """torch's name of the floating-point dtype ``name`` (``"bf16"`` -> ``"bfloat16"``); ValueError otherwise."""
    canonical = DTYPE_ALIASES.get(name, name)
    if canonical not in FLOAT_DTYPES + _OTHER_FLOAT_NAMES and not canonical.startswith(_FLOAT_FAMILIES):
        raise unknown_dtype(name)
    return canonical


def unknown_dtype(name: str) -> ValueError:
    return ValueError(f"unknown dtype {name!r}; use {', '.join(FLOAT_DTYPES)} or {AUTO_DTYPE!r}")
