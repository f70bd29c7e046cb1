"""Tensors as raw little-endian bytes + shape + dtype name.

No pickle: the bytes are plain C-order element data, so any reader (numpy, another language) can decode them,
and decoding never runs code. numpy has no bfloat16 or float8, so those are stored as their bit patterns and
decode to torch losslessly, or to numpy upcast to float32 (also lossless: float32 holds every such value).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from coglens.lens.store.errors import LensDatabaseError, UnsupportedDtypeError

ArrayKind = Literal["numpy", "torch"]


@dataclass(frozen=True)
class EncodedTensor:
    """A tensor ready for a database row: `data` holds prod(shape) elements of `dtype`, little-endian."""

    data: bytes
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class _DtypeCodec:
    name: str
    torch_dtype: torch.dtype
    storage: np.dtype  # little-endian numpy dtype of the stored elements
    bit_pattern: bool  # True: `storage` is a same-size integer holding the bits of a dtype numpy lacks


def _build_codecs() -> dict[str, _DtypeCodec]:
    numpy_backed = {
        "bool": "|b1",
        "uint8": "|u1",
        "int8": "|i1",
        "int16": "<i2",
        "uint16": "<u2",
        "int32": "<i4",
        "uint32": "<u4",
        "int64": "<i8",
        "uint64": "<u8",
        "float16": "<f2",
        "float32": "<f4",
        "float64": "<f8",
        "complex64": "<c8",
        "complex128": "<c16",
    }
    bit_patterns = {
        "bfloat16": "<i2",
        "float8_e4m3fn": "|u1",
        "float8_e4m3fnuz": "|u1",
        "float8_e5m2": "|u1",
        "float8_e5m2fnuz": "|u1",
        "float8_e8m0fnu": "|u1",
    }
    codecs = {}
    for table, is_pattern in ((numpy_backed, False), (bit_patterns, True)):
        for name, storage in table.items():
            torch_dtype = getattr(torch, name, None)
            if torch_dtype is not None:  # float8 variants depend on the torch version
                codecs[name] = _DtypeCodec(name, torch_dtype, np.dtype(storage), is_pattern)
    return codecs


_CODECS = _build_codecs()
_BY_TORCH_DTYPE = {codec.torch_dtype: codec for codec in _CODECS.values()}
_TORCH_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16}

DTYPE_NAMES: tuple[str, ...] = tuple(_CODECS)
"""Every dtype name the codec stores, e.g. "float32", "bfloat16", "bool"."""


def _codec(dtype: str) -> _DtypeCodec:
    try:
        return _CODECS[dtype]
    except KeyError:
        raise UnsupportedDtypeError(
            f"unknown stored dtype {dtype!r}; this CogLens reads {', '.join(DTYPE_NAMES)} "
            "(was the database written by a newer CogLens?)"
        ) from None


def encode_tensor(value: torch.Tensor | np.ndarray) -> EncodedTensor:
    """Encode a tensor (any device, any strides) or numpy array into raw little-endian bytes."""
    if isinstance(value, np.ndarray):
        try:
            value = torch.from_numpy(np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("=")))
        except TypeError as error:
            raise UnsupportedDtypeError(f"cannot store a numpy array of dtype {value.dtype}: {error}") from None
    codec = _BY_TORCH_DTYPE.get(value.dtype)
    if codec is None:
        raise UnsupportedDtypeError(
            f"cannot store a tensor of dtype {value.dtype}; convert it to one of {', '.join(DTYPE_NAMES)}"
        )
    tensor = value.detach().to("cpu").resolve_conj().resolve_neg().contiguous()
    if codec.bit_pattern:
        tensor = tensor.view(_TORCH_INT_OF_SIZE[codec.storage.itemsize])
    data = tensor.numpy().astype(codec.storage, copy=False).tobytes()
    return EncodedTensor(data=data, shape=tuple(tensor.shape), dtype=codec.name)


def _native_elements(data: bytes | bytearray, shape: tuple[int, ...], codec: _DtypeCodec) -> np.ndarray:
    """A writable native-order array over `data` (copied unless it is already a bytearray)."""
    expected = math.prod(shape) * codec.storage.itemsize
    if len(data) != expected:
        raise LensDatabaseError(
            f"corrupt activation: {len(data)} bytes stored for shape {list(shape)} of {codec.name} "
            f"({expected} expected); re-extract this run"
        )
    buffer = data if isinstance(data, bytearray) else bytearray(data)
    elements = np.frombuffer(buffer, dtype=codec.storage)
    if sys.byteorder == "big":
        elements = elements.astype(codec.storage.newbyteorder("="))
    return elements.reshape(shape)


def decode_tensor(data: bytes | bytearray, shape: tuple[int, ...] | list[int], dtype: str) -> torch.Tensor:
    """Decode stored bytes into a torch tensor of the stored dtype (bfloat16 stays bfloat16)."""
    codec = _codec(dtype)
    tensor = torch.from_numpy(_native_elements(data, tuple(shape), codec))
    return tensor.view(codec.torch_dtype) if codec.bit_pattern else tensor


def decode_array(data: bytes | bytearray, shape: tuple[int, ...] | list[int], dtype: str) -> np.ndarray:
    """Decode stored bytes into a numpy array; dtypes numpy lacks (bfloat16, float8) come back as float32."""
    codec = _codec(dtype)
    if codec.bit_pattern:
        return decode_tensor(data, shape, dtype).to(torch.float32).numpy()
    return _native_elements(data, tuple(shape), codec)


def decode(data: bytes | bytearray, shape: tuple[int, ...] | list[int], dtype: str, as_: ArrayKind):
    """`decode_array` or `decode_tensor`, chosen by `as_` ("numpy" | "torch")."""
    if as_ == "numpy":
        return decode_array(data, shape, dtype)
    if as_ == "torch":
        return decode_tensor(data, shape, dtype)
    raise ValueError(f"as_={as_!r} is not supported; use 'numpy' or 'torch'")
