"""The tensor codec: raw little-endian bytes + shape + dtype name, lossless for every dtype, no pickle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coglens.lens import DTYPE_NAMES, UnsupportedDtypeError, decode_array, decode_tensor, encode_tensor
from coglens.lens.store.errors import LensDatabaseError

SHAPES = [(), (0,), (2, 0, 3), (5,), (2, 3, 4)]


def _example(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """Values spanning the dtype's range (negatives, fractions, extremes) where it has them."""
    n = int(np.prod(shape))
    if dtype == torch.bool:
        return (torch.arange(n) % 3 == 0).reshape(shape)
    if dtype.is_complex:
        return torch.complex(torch.linspace(-3, 3, n), torch.linspace(2, -2, n)).to(dtype).reshape(shape)
    if dtype.is_floating_point:
        base = torch.linspace(-2.5, 2.5, n) if "e8m0" not in str(dtype) else torch.logspace(-3, 3, n, base=2)
        return base.to(dtype).reshape(shape)
    info = torch.iinfo(dtype)
    values = torch.linspace(max(info.min, -(2**40)), min(info.max, 2**40), n, dtype=torch.float64)
    return values.to(torch.int64).clamp(max(info.min, -(2**40)), min(info.max, 2**40)).to(dtype).reshape(shape)


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns, so NaN/-0.0 and dtypes torch cannot compare still compare exactly."""
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def test_covers_the_dtypes_that_make_sense():
    expected = {"bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64"}
    assert expected <= set(DTYPE_NAMES)
    assert "complex64" in DTYPE_NAMES and "float8_e4m3fn" in DTYPE_NAMES


@pytest.mark.parametrize("name", DTYPE_NAMES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_torch_round_trip_is_bit_exact(name, shape):
    original = _example(getattr(torch, name), shape)
    encoded = encode_tensor(original)
    assert encoded.dtype == name and encoded.shape == shape
    assert len(encoded.data) == original.numel() * original.element_size()
    decoded = decode_tensor(encoded.data, encoded.shape, encoded.dtype)
    assert decoded.dtype == original.dtype and decoded.shape == original.shape
    assert torch.equal(_bits(decoded), _bits(original))


@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_numpy_decoding_keeps_every_value(name):
    original = _example(getattr(torch, name), (2, 3))
    encoded = encode_tensor(original)
    array = decode_array(encoded.data, encoded.shape, encoded.dtype)
    if name == "bfloat16" or name.startswith("float8"):
        assert array.dtype == np.float32  # numpy has no such dtype: upcast, which is exact
        np.testing.assert_array_equal(array, original.to(torch.float32).numpy())
    else:
        assert array.dtype == original.numpy().dtype
        np.testing.assert_array_equal(array, original.numpy())
    array[...] = 0  # decoded arrays are writable, not views of a read-only buffer


def test_bytes_are_little_endian_c_order_elements():
    encoded = encode_tensor(torch.tensor([[1, 2], [3, 258]], dtype=torch.int32).t())  # transposed: not contiguous
    assert encoded.shape == (2, 2)
    assert encoded.data == bytes([1, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 2, 1, 0, 0])
    assert encode_tensor(torch.tensor(1.0, dtype=torch.bfloat16)).data == bytes([0x80, 0x3F])  # 0x3F80


def test_bfloat16_special_values_survive():
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-40, 3.0e38], dtype=torch.bfloat16)
    encoded = encode_tensor(special)
    assert torch.equal(_bits(decode_tensor(encoded.data, encoded.shape, "bfloat16")), _bits(special))


def test_views_conjugates_and_grad_tensors_are_encoded_as_their_values():
    batch = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    row = batch[2, ::2]
    assert encode_tensor(row).data == np.array([12, 14, 16], dtype="<f4").tobytes()
    conj = torch.tensor([1 + 2j], dtype=torch.complex64).conj()
    assert decode_tensor(*_fields(encode_tensor(conj))).item() == 1 - 2j
    leaf = torch.ones(2, requires_grad=True)
    assert decode_tensor(*_fields(encode_tensor(leaf * 2))).tolist() == [2.0, 2.0]


def test_numpy_input_including_big_endian():
    big_endian = np.array([1.5, -2.0], dtype=">f8")
    encoded = encode_tensor(big_endian)
    assert encoded.dtype == "float64" and encoded.data == np.array([1.5, -2.0], dtype="<f8").tobytes()


def _fields(encoded):
    return encoded.data, encoded.shape, encoded.dtype


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_unsupported_dtypes_are_refused_clearly():
    with pytest.raises(UnsupportedDtypeError, match="torch.complex32; convert it to one of"):
        encode_tensor(torch.zeros(2, dtype=torch.complex32))
    with pytest.raises(UnsupportedDtypeError, match="numpy array of dtype <U"):
        encode_tensor(np.array(["a"]))
    with pytest.raises(UnsupportedDtypeError, match="unknown stored dtype 'float128'"):
        decode_array(b"", (0,), "float128")


def test_corrupt_lengths_are_reported():
    with pytest.raises(LensDatabaseError, match="7 bytes stored for shape \\[2\\] of float32"):
        decode_array(b"\0" * 7, (2,), "float32")
