"""Decoding: every input becomes a (32, 32, 3) uint8 array, or BadImage with a short reason."""

from __future__ import annotations

import contextlib
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from realfake.data import images
from realfake.data.images import BadImage, decode_bytes, from_any, to_model_array

SHAPE = (32, 32, 3)


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_header(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims w x h pixels (no pixel data to speak of)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def check(a: np.ndarray) -> np.ndarray:
    assert isinstance(a, np.ndarray)
    assert a.shape == SHAPE
    assert a.dtype == np.uint8
    return a


# --- modes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "F"])
def test_every_mode_becomes_rgb_uint8(mode):
    img = Image.fromarray(noise(40, 40)).convert(mode)
    check(to_model_array(img))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"])
def test_every_format_decodes(fmt):
    data = encode(Image.fromarray(noise(48, 40)), fmt)
    check(decode_bytes(data))


def test_gray_l_is_replicated_to_three_equal_channels():
    a = check(to_model_array(Image.new("L", (32, 32), 77)))
    assert (a == 77).all()


def test_la_transparent_composited_on_white():
    img = Image.new("LA", (32, 32), (0, 255))
    img.putpixel((0, 0), (0, 0))  # transparent black
    a = check(decode_bytes(encode(img)))
    assert (a[0, 0] == 255).all()
    assert (a[5, 5] == 0).all()


def test_rgba_transparent_pixel_becomes_white_opaque_kept():
    img = Image.new("RGBA", (32, 32), (255, 0, 0, 255))
    img.putpixel((3, 4), (0, 0, 0, 0))
    img.putpixel((5, 6), (0, 0, 0, 128))  # half-transparent black on white: mid grey
    a = check(decode_bytes(encode(img)))
    assert a[4, 3].tolist() == [255, 255, 255]
    assert a[0, 0].tolist() == [255, 0, 0]
    assert np.all(np.abs(a[6, 5].astype(int) - 127) <= 2)


def test_palette_without_transparency_keeps_colours():
    img = Image.new("RGB", (32, 32), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert img.mode == "P" and "transparency" not in img.info
    a = check(decode_bytes(encode(img)))
    assert np.all(np.abs(a.astype(int) - [10, 200, 30]) <= 2)


def test_palette_with_transparency_composited_on_white():
    img = Image.new("P", (32, 32), 1)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black, index 1 blue
    img.putpixel((0, 0), 0)
    img.info["transparency"] = 0
    data = encode(img, transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    a = check(decode_bytes(data))
    assert a[0, 0].tolist() == [255, 255, 255]  # transparent black -> white, not black
    assert a[10, 10].tolist() == [0, 0, 255]


def test_cmyk():
    img = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # red
    img.putpixel((0, 0), (0, 0, 0, 0))  # white
    a = check(decode_bytes(encode(img, "TIFF")))
    assert a[5, 5].tolist() == [255, 0, 0]
    assert a[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize("via_file", [False, True])
def test_16_bit_gray_scaled_not_clipped(via_file):
    a16 = np.full((32, 32), 65535, dtype=np.uint16)
    a16[16:] = 32768
    a16[:, :4] = 0
    img = Image.fromarray(a16)
    assert img.mode.startswith("I;16")
    a = check(decode_bytes(encode(img)) if via_file else to_model_array(img))
    assert a[0, 10].tolist() == [255, 255, 255]
    assert np.all(np.abs(a[20, 10].astype(int) - 128) <= 1)
    assert a[0, 0].tolist() == [0, 0, 0]


def test_mode_i_uses_16_bit_range():
    img = Image.fromarray(np.full((32, 32), 65535, dtype=np.int32))
    assert img.mode == "I"
    a = check(to_model_array(img))
    assert (a == 255).all()
    img = Image.fromarray(np.full((32, 32), 32768, dtype=np.int32))
    assert np.all(np.abs(to_model_array(img).astype(int) - 128) <= 1)


@pytest.mark.parametrize(("value", "expected"), [(1.0, 255), (0.5, 128), (200.0, 200)])
def test_mode_f(value, expected):
    f = np.zeros((32, 32), dtype=np.float32)
    f[:, 16:] = value
    img = Image.fromarray(f)
    assert img.mode == "F"
    a = check(to_model_array(img))
    assert np.all(np.abs(a[:, 16:].astype(int) - expected) <= 1)
    assert (a[:, :16] == 0).all()


# --- geometry ----------------------------------------------------------------------------------


def test_exif_orientation_is_applied():
    a = np.zeros((32, 64, 3), dtype=np.uint8)
    a[:, :32] = 255  # left half bright
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = encode(img, "JPEG", exif=exif, quality=95)

    out = check(decode_bytes(data)).astype(int)
    # Displayed upright the picture is 32 wide, 64 tall, bright on top; the centre crop keeps the
    # middle 32 rows: top half bright, bottom half dark. Without the rotation it would be left/right.
    assert out[:12].mean() > 200 and out[-12:].mean() < 50
    assert abs(out[:, :12].mean() - out[:, -12:].mean()) < 20

    with Image.open(io.BytesIO(data)) as raw:
        raw.load()
        upright = raw.transpose(Image.Transpose.ROTATE_270)
        upright.info.pop("exif", None)
    expected = to_model_array(upright).astype(int)
    assert np.abs(out - expected).max() <= 2


def test_no_exif_orientation_means_unrotated():
    a = np.zeros((32, 64, 3), dtype=np.uint8)
    a[:, :32] = 255
    out = check(decode_bytes(encode(Image.fromarray(a), "JPEG", quality=95))).astype(int)
    assert out[:, :12].mean() > 200 and out[:, -12:].mean() < 50


def test_wide_image_is_centre_cropped_not_squashed():
    a = np.zeros((32, 96, 3), dtype=np.uint8)
    a[:, :, 2] = 255  # blue
    a[:, 32:64] = (255, 0, 0)  # centre third red
    out = check(decode_bytes(encode(Image.fromarray(a))))
    assert (out == [255, 0, 0]).all()


@pytest.mark.parametrize("wide", [True, False])
def test_large_non_square_image_is_centre_cropped_and_downscaled(wide):
    a = np.zeros((64, 192, 3), dtype=np.uint8)
    a[:, :, 2] = 255
    a[:, 64:128] = (255, 0, 0)
    if not wide:
        a = a.transpose(1, 0, 2).copy()
    out = check(decode_bytes(encode(Image.fromarray(a)))).astype(int)
    red = (out[..., 0] > 200) & (out[..., 2] < 60)
    assert red.mean() > 0.9


def test_32x32_png_passes_through_unchanged():
    a = noise(32, 32, seed=3)
    assert np.array_equal(decode_bytes(encode(Image.fromarray(a))), a)
    assert np.array_equal(to_model_array(Image.fromarray(a)), a)


def test_small_image_is_upscaled():
    check(decode_bytes(encode(Image.fromarray(noise(8, 12)))))


# --- bad input ---------------------------------------------------------------------------------


def test_zero_bytes():
    with pytest.raises(BadImage, match="empty"):
        decode_bytes(b"")


def test_text_is_not_an_image():
    with pytest.raises(BadImage, match="not an image"):
        decode_bytes(b"not an image, just some text\n" * 10)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(fmt):
    data = encode(Image.fromarray(noise(64, 64)), fmt)
    decode_bytes(data)  # the whole file is fine
    with pytest.raises(BadImage):
        decode_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("side", [9_000, 10_000, 20_000])  # our limit, Pillow's warning, Pillow's error
def test_too_many_pixels_refused_from_header(side):
    with pytest.raises(BadImage, match="too many pixels"):
        decode_bytes(png_header(side, side))


def test_max_pixels_applies_to_real_images(monkeypatch):
    data = encode(Image.fromarray(noise(32, 32)))
    decode_bytes(data)
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    with pytest.raises(BadImage, match="too many pixels"):
        decode_bytes(data)
    with pytest.raises(BadImage, match="too many pixels"):
        to_model_array(Image.fromarray(noise(32, 32)))


def test_corrupted_files_never_escape_as_other_errors():
    rng = np.random.default_rng(1)
    originals = [encode(Image.fromarray(noise(40, 40)), fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP")]
    for data in originals:
        for _ in range(60):
            d = bytearray(data)
            for pos in rng.integers(0, len(d), rng.integers(1, 6)):
                d[pos] = rng.integers(0, 256)
            with contextlib.suppress(BadImage):
                check(decode_bytes(bytes(d)))


def test_bad_image_is_a_value_error():
    assert issubclass(BadImage, ValueError)


# --- from_any ----------------------------------------------------------------------------------


def test_from_any_float_in_unit_range():
    f = np.zeros((32, 32, 3), dtype=np.float32)
    f[..., 0] = 1.0
    f[..., 1] = 0.5
    a = check(from_any(f))
    assert (a[..., 0] == 255).all() and (np.abs(a[..., 1].astype(int) - 128) <= 1).all()
    assert (a[..., 2] == 0).all()


def test_from_any_uint8_array_is_exact():
    a = noise(32, 32, seed=5)
    assert np.array_equal(from_any(a), a)


def test_from_any_grayscale_2d_and_single_channel():
    g = np.full((32, 32), 90, dtype=np.uint8)
    assert (check(from_any(g)) == 90).all()
    assert (check(from_any(g[..., None])) == 90).all()


def test_from_any_rgba_array_composited():
    a = np.zeros((32, 32, 4), dtype=np.uint8)  # fully transparent black
    assert (check(from_any(a)) == 255).all()


def test_from_any_large_array_resized():
    check(from_any(noise(100, 60)))


def test_from_any_pil_and_bytes():
    img = Image.fromarray(noise(32, 32))
    assert np.array_equal(from_any(img), np.asarray(img))
    data = encode(img)
    assert np.array_equal(from_any(data), np.asarray(img))
    assert np.array_equal(from_any(bytearray(data)), np.asarray(img))


@pytest.mark.parametrize(
    "bad",
    [np.zeros((32, 32, 2)), np.zeros(10), np.zeros((2, 32, 32, 3)), np.zeros((0, 0)), "x.png", None, 3],
)
def test_from_any_bad_input(bad):
    with pytest.raises(BadImage):
        from_any(bad)
