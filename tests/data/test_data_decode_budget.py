"""Memory and time bombs that pass the pixel limit: the decode budget is on bytes (checked from the header,
before any pixel is loaded), and high-bit-depth images become 8 bit without whole-image float64 copies,
with the same bytes as before for every image (the decode result keys the cache)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from tests.data.childproc import posix_only, run_child

from realfake.data import images
from realfake.data.images import BadImage, decode_bytes

pytestmark = pytest.mark.timeout(180)


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_file(w: int, h: int, depth: int = 8, colour: int = 2, row: bytes | None = None) -> bytes:
    """A PNG written row by row (so a huge one costs no memory here); header only when `row` is None."""
    comp = zlib.compressobj(6)
    idat = b"" if row is None else b"".join(comp.compress(b"\0" + row) for _ in range(h)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    idat = idat or zlib.compress(b"")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def tiff_header(w: int, h: int, bits: int, sample_format: int) -> bytes:
    """A little-endian one-strip grey TIFF header claiming w x h samples of `bits` (no pixel data)."""
    tags = [(256, 4, w), (257, 4, h), (258, 3, bits), (259, 3, 1), (262, 3, 1), (273, 4, 8), (277, 3, 1),
            (278, 4, h), (279, 4, w * h * bits // 8), (339, 3, sample_format)]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", v, 0) if kind == 3 else struct.pack("<I", v))
        for tag, kind, v in tags) + struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", 8) + ifd


# --- the decode budget is on bytes -----------------------------------------------------------------------


def test_budget_admits_every_8_bit_rgb_image_the_pixel_limit_admits():
    assert images.MAX_PIXELS * 3 <= images.MAX_DECODE_BYTES  # so no previously accepted RGB image is refused


@pytest.mark.parametrize(("data", "what"), [
    (tiff_header(7500, 7500, 32, 3), "F"),  # 56 Mpx: under the pixel limit, 225 MB as 32-bit floats
    (tiff_header(7500, 7500, 32, 1), "I"),
    (png_file(7500, 7500, 8, 6), "RGBA"),  # 4 bytes a pixel
], ids=["tiff-F", "tiff-I", "png-RGBA"])
def test_too_many_bytes_refused_from_the_header(data, what):
    assert images.MAX_PIXELS > 7500 * 7500
    with pytest.raises(BadImage, match=rf"too large to decode \(7500x7500 {what}: 225,000,000 bytes > "):
        decode_bytes(data)


def test_same_pixels_in_fewer_bytes_pass_the_budget():
    with pytest.raises(BadImage) as e:  # 3 bytes a pixel fits; it then fails only for its missing pixels
        decode_bytes(png_file(7500, 7500, 8, 2))
    assert "too large" not in str(e.value) and "too many" not in str(e.value)


@posix_only
def test_16_bit_png_bomb_decodes_within_bounded_memory(tmp_path):
    """The issue's file: 121 KB, 7900x7900 16-bit grey (125 MB of samples); it peaked at +1.6 GB (float64)."""
    path = tmp_path / "bomb16.png"
    path.write_bytes(png_file(7900, 7900, 16, 0, row=b"\x12\x34" * 7900))
    assert path.stat().st_size < 200_000
    out = run_child("""
from realfake.data.images import decode_bytes
data = open(sys.argv[1], "rb").read()
base, t = peak_mb(), time.perf_counter()
a = decode_bytes(data)
print(json.dumps({"mb": peak_mb() - base, "s": time.perf_counter() - t, "shape": a.shape, "px": a[5, 7].tolist()}))
""", str(path))
    assert out["shape"] == [32, 32, 3] and out["px"] == [18, 18, 18]  # 0x1234 / 257, rounded: scaled, not clipped
    assert out["mb"] < 400, out  # the 125 MB of 16-bit samples, the 62 MB of 8-bit ones, and little else


def _reference_to_8bit(a: np.ndarray) -> np.ndarray:
    """PREPROCESS_VERSION 1's arithmetic, on the whole image at once (what the cache was built with)."""
    if a.dtype.kind == "f":
        a = a.astype(np.float64)
        hi = 1.0 if a.size and a.max() <= 1.0 else 255.0
        return np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.clip(a.astype(np.float64) / 257.0 + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["I;16", "I", "F-unit", "F-255", "F-nan"])
def test_banded_high_bit_depth_conversion_is_byte_identical(kind, monkeypatch):
    monkeypatch.setattr(images, "_BAND_PIXELS", 100, raising=False)  # many bands, ragged last one
    rng = np.random.default_rng(1)
    a = {"I;16": lambda: rng.integers(0, 65536, (37, 29)).astype(np.uint16),
         "I": lambda: rng.integers(-70000, 140000, (37, 29)).astype(np.int32),
         "F-unit": lambda: rng.random((37, 29), dtype=np.float32),
         "F-255": lambda: (rng.random((37, 29)) * 300).astype(np.float32),
         "F-nan": lambda: np.where(rng.random((37, 29)) < 0.01, np.nan, rng.random((37, 29))).astype(np.float32),
         }[kind]()
    with np.errstate(invalid="ignore"):
        expected = _reference_to_8bit(a)
        got = np.asarray(images.to_rgb(Image.fromarray(a)))
    assert got.shape == (37, 29, 3)
    if kind == "F-nan":  # NaN's cast is platform-defined; every other pixel must match
        ok = ~np.isnan(a)
        assert np.array_equal(got[..., 0][ok], expected[ok])
    else:
        assert np.array_equal(got[..., 0], expected)


@pytest.mark.parametrize("size", [(33, 33), (97, 40), (640, 480), (1234, 777), (3000, 2001)])
def test_grey_images_resized_before_rgb_give_the_same_bytes(size):
    """Grey images are cropped and resized as L, then replicated: the same bytes as through RGB, at 1/4 of
    the memory. Compared here with the old order (RGB first), so the cache key need not change."""
    a = np.random.default_rng(size[0]).integers(0, 256, size[::-1], dtype=np.uint8)
    rgb = Image.fromarray(a).convert("RGB")
    side = min(rgb.size)
    left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
    old = rgb.crop((left, top, left + side, top + side)).resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=3.0)
    assert np.array_equal(images.to_model_array(Image.fromarray(a)), np.asarray(old))
