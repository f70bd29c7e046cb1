"""load_image / to_rgb / preprocess_image: parity with the recorded torchvision pipeline, modes, errors."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from testkit import load_goldens, parity_folder

from coglens.processing.errors import (
    ImageDecodeError,
    ImageInputError,
    ImageModeError,
    ImageNotFoundError,
    ImageTooLargeError,
)
from coglens.processing.image import CLIP_MEAN, CLIP_STD, load_image, preprocess_image, to_rgb


def _encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def _noise(mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


# --- parity -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cogvlm", "cogvlm2"])
def test_preprocess_matches_recorded_pixel_values(name):
    recorded = load_goldens(name)
    image = load_image(parity_folder(name, "-goldens") / "test_image.png")
    assert torch.equal(torch.from_numpy(_pixels(image).copy()), recorded["preprocess/image_uint8"])
    pixel_values = preprocess_image(image, 56)
    assert pixel_values.dtype == torch.float32 and pixel_values.shape == (3, 56, 56)
    torch.testing.assert_close(pixel_values, recorded["preprocess/pixel_values"], atol=1e-6, rtol=0)


def test_preprocess_is_resize_scale_normalise_by_hand():
    image = _noise(size=(9, 5))
    resized = np.asarray(image.resize((4, 4), Image.Resampling.BICUBIC)).astype(np.float64) / 255
    expected = (resized - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    actual = preprocess_image(image, 4)
    np.testing.assert_allclose(actual.permute(1, 2, 0).numpy(), expected, atol=2e-6)


def test_all_sources_give_the_same_image(tmp_path):
    image = _noise()
    path = tmp_path / "noise.png"
    image.save(path)
    expected = _pixels(image)
    for source in (path, str(path), path.read_bytes(), Image.open(path)):
        loaded = load_image(source)
        assert loaded.mode == "RGB"
        np.testing.assert_array_equal(_pixels(loaded), expected)


def test_preprocess_converts_a_non_rgb_image_first():
    grey = _noise("L")
    torch.testing.assert_close(preprocess_image(grey, 8), preprocess_image(grey.convert("RGB"), 8), atol=0, rtol=0)


# --- modes ------------------------------------------------------------------------------------------------


def test_rgba_drops_alpha_by_default_like_convert_rgb():
    rgba = Image.new("RGBA", (2, 1))
    rgba.putdata([(10, 20, 30, 0), (200, 100, 50, 128)])
    np.testing.assert_array_equal(_pixels(to_rgb(rgba)), [[[10, 20, 30], [200, 100, 50]]])
    np.testing.assert_array_equal(_pixels(to_rgb(rgba)), _pixels(rgba.convert("RGB")))


def test_rgba_composites_onto_a_background_when_asked():
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(10, 20, 30, 0), (10, 20, 30, 255), (0, 0, 0, 51)])
    out = _pixels(to_rgb(rgba, background=(255, 255, 255)))
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])  # fully transparent: the background
    np.testing.assert_array_equal(out[0, 1], [10, 20, 30])  # opaque: unchanged
    np.testing.assert_allclose(out[0, 2], [204, 204, 204], atol=1)  # 20% black over white


def test_la_and_l_and_1_become_grey_rgb():
    la = Image.new("LA", (1, 1), (77, 0))
    np.testing.assert_array_equal(_pixels(to_rgb(la)), [[[77, 77, 77]]])
    np.testing.assert_array_equal(_pixels(to_rgb(Image.new("L", (1, 1), 200))), [[[200, 200, 200]]])
    bilevel = Image.new("1", (2, 1))
    bilevel.putdata([0, 255])
    np.testing.assert_array_equal(_pixels(to_rgb(bilevel)), [[[0, 0, 0], [255, 255, 255]]])


def _palette_image() -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putdata([0, 1])
    return image


def test_palette_looks_up_colours():
    np.testing.assert_array_equal(_pixels(to_rgb(_palette_image())), [[[255, 0, 0], [0, 0, 255]]])


@pytest.mark.parametrize("transparency", [0, bytes([0, 255])], ids=["index", "bytes"])
def test_palette_with_transparency_drops_it_quietly_or_composites(transparency, tmp_path):
    image = _palette_image()
    image.info["transparency"] = transparency
    path = tmp_path / "palette.png"
    image.save(path, transparency=transparency)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow warns on P -> RGB with byte transparency; we must not
        np.testing.assert_array_equal(_pixels(load_image(path)), [[[255, 0, 0], [0, 0, 255]]])
        composited = load_image(path, background=(0, 255, 0))
    np.testing.assert_array_equal(_pixels(composited), [[[0, 255, 0], [0, 0, 255]]])  # index 0 is transparent


def test_cmyk_and_ycbcr_use_pillows_conversion():
    np.testing.assert_array_equal(_pixels(to_rgb(Image.new("CMYK", (1, 1), (0, 255, 0, 0)))), [[[255, 0, 255]]])
    np.testing.assert_array_equal(_pixels(to_rgb(Image.new("YCbCr", (1, 1), (128, 128, 128)))), [[[128, 128, 128]]])


def test_cmyk_jpeg_file_loads(tmp_path):
    path = tmp_path / "cmyk.jpg"
    _noise("CMYK").save(path)
    assert load_image(path).mode == "RGB"


def test_16_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)  # mode I;16
    assert image.mode == "I;16"
    np.testing.assert_array_equal(_pixels(to_rgb(image))[..., 0], [[0, 100, 255]])
    path = tmp_path / "deep.png"
    image.save(path)
    np.testing.assert_array_equal(_pixels(load_image(path))[..., 0], [[0, 100, 255]])
    big_endian = Image.frombytes("I;16B", (3, 1), values.astype(">u2").tobytes())
    np.testing.assert_array_equal(_pixels(to_rgb(big_endian))[..., 0], [[0, 100, 255]])


def test_32_bit_int_picks_its_full_scale():
    eight_bit = Image.fromarray(np.array([[0, 128, 255]], dtype=np.int32))
    assert eight_bit.mode == "I"
    np.testing.assert_array_equal(_pixels(to_rgb(eight_bit))[..., 0], [[0, 128, 255]])
    sixteen_bit = Image.fromarray(np.array([[-5, 257 * 3, 65535]], dtype=np.int32))
    np.testing.assert_array_equal(_pixels(to_rgb(sixteen_bit))[..., 0], [[0, 3, 255]])


def test_float_is_read_as_unit_range_or_eight_bit():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32))
    assert unit.mode == "F"
    np.testing.assert_array_equal(_pixels(to_rgb(unit))[..., 0], [[0, 128, 255, 0]])
    eight_bit = Image.fromarray(np.array([[0.0, 100.0, 255.0]], dtype=np.float32))
    np.testing.assert_array_equal(_pixels(to_rgb(eight_bit))[..., 0], [[0, 100, 255]])


def test_high_depth_result_is_grey_rgb():
    rgb = to_rgb(Image.fromarray(np.array([[1000]], dtype=np.uint16)))
    assert rgb.mode == "RGB" and len(set(rgb.getpixel((0, 0)))) == 1


def test_mode_without_rgb_conversion_is_an_image_mode_error():
    with pytest.raises(ImageModeError, match="'La'"):
        load_image(Image.new("La", (2, 2)))


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(_pixels(load_image(path))[0, 0], [255, 0, 0])


# --- errors -----------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ImageNotFoundError, match="does not exist"):
        load_image(tmp_path / "nope.png")


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageNotFoundError, match="directory"):
        load_image(tmp_path)


def test_url_is_not_fetched():
    with pytest.raises(ImageNotFoundError, match="URLs are not downloaded"):
        load_image("https://example.com/cat.png")


def test_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("just some text")
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image(path)


def test_unsupported_source_type():
    with pytest.raises(ImageDecodeError, match="ndarray"):
        load_image(np.zeros((4, 4, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "TIFF"])
def test_truncated_file(fmt):
    data = _encoded(_noise(size=(64, 64)), fmt)
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        load_image(data[: len(data) // 2])


def test_corrupt_png_data():
    data = bytearray(_encoded(_noise(size=(64, 64)), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start : start + 200] = bytes(range(200))
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        load_image(bytes(data))


def test_error_classes_are_value_errors():
    assert issubclass(ImageTooLargeError, ImageInputError) and issubclass(ImageInputError, ValueError)


def test_more_pixels_than_max_pixels_is_refused():
    data = _encoded(_noise(size=(100, 100)), "PNG")
    with pytest.raises(ImageTooLargeError, match="100x100 = 10000 pixels, more than max_pixels=9999"):
        load_image(data, max_pixels=9999)
    assert load_image(data, max_pixels=10000).size == (100, 100)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds no pixel data: decoding it would fail."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 10))


def test_bomb_is_refused_from_the_header_before_decoding():
    # Over our default (64M) but under Pillow's own limit (~89M), so our header check is what refuses it; had
    # the pixels been decoded first, this file would fail as truncated instead.
    with pytest.raises(ImageTooLargeError, match="8500x8500 = 72250000 pixels"):
        load_image(_png_header_only(8500, 8500))


@pytest.mark.parametrize("side", [10_000, 20_000], ids=["pillow-warning", "pillow-error"])
def test_pillows_own_bomb_guard_becomes_our_error(side):
    # max_pixels is set above the image, so only Pillow's MAX_IMAGE_PIXELS check (warning, or error at 2x) fires.
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        load_image(_png_header_only(side, side), max_pixels=10**12)


# --- hostile data -------------------------------------------------------------------------------------------


def _png(width: int, height: int, *chunks: tuple[bytes, bytes]) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + b"".join(chunk(kind, body) for kind, body in chunks) + chunk(b"IEND", b"")


@pytest.mark.parametrize("data", [
    b"\x89PNG\r\n\x1a\n" + b"garbage" * 10,  # Pillow: OSError while opening
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR" + b"\x00" * 5,  # ValueError: truncated IHDR
    b"BM" + b"\xff" * 60,  # OSError while opening
    b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 20,  # the WebP decoder cannot start
    _png(4, 4, (b"IDAT", b"not deflate")),  # zlib stream error while decoding
], ids=["png-garbage", "png-short-header", "bmp-garbage", "webp-garbage", "png-bad-deflate"])
def test_valid_signature_with_a_garbage_body_is_an_image_error(data):
    with pytest.raises(ImageDecodeError, match=r"the given image bytes \(\d+ bytes\) is (corrupt|not an image)"):
        load_image(data)


@pytest.mark.parametrize(("width", "height"), [(0, 0), (5, 0), (0, 7)])
def test_zero_sized_png_says_so(width, height):
    with pytest.raises(ImageDecodeError, match=rf"the image has zero width or height \({width}x{height}\)"):
        load_image(_png(width, height))


def test_zero_sized_bmp_file_says_so(tmp_path):
    bmp = bytearray(_encoded(Image.new("RGB", (3, 2)), "BMP"))
    bmp[18:26] = struct.pack("<ii", 3, 0)
    path = tmp_path / "flat.bmp"
    path.write_bytes(bytes(bmp))
    with pytest.raises(ImageDecodeError, match=r"flat.bmp': the image has zero width or height \(3x0\)"):
        load_image(path)


def test_unreadable_file_names_the_file(tmp_path):
    path = tmp_path / "locked.png"
    path.write_bytes(_encoded(_noise(), "PNG"))
    path.chmod(0)
    try:
        if _readable(path):
            pytest.skip("running as a user who can read any file (root)")
        with pytest.raises(ImageNotFoundError, match=r"locked.png' cannot be read: Permission denied"):
            load_image(path)
    finally:
        path.chmod(0o600)


def _readable(path) -> bool:
    try:
        path.read_bytes()
    except PermissionError:
        return False
    return True


def test_too_large_error_carries_the_header_pixels():
    with pytest.raises(ImageTooLargeError) as caught:
        load_image(_png_header_only(300, 200), max_pixels=59_999)
    assert caught.value.pixels == 60_000
