"""Decode any image into the one form the models see: 32x32 RGB uint8.

This is the single place preprocessing lives; training, evaluation, prediction and serving all call
`to_model_array` (or `decode_bytes`, which wraps it), so what a model is fed can never drift. And every door
an image comes through (the data cache, batch prediction, the Detector, the server) reads it with
`read_and_decode`, so the reason a user sees for a bad file never depends on the door.
"""

from __future__ import annotations

import io
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from realfake.contract import IMAGE_SIZE

# A decompression bomb (a tiny file that unpacks to gigapixels) is refused before its pixels are read.
MAX_PIXELS = 64_000_000
# Bumped whenever what `to_model_array` returns for the same file could change: it keys the cache.
PREPROCESS_VERSION = 1
PREPROCESS_SETTINGS: dict[str, Any] = {
    "size": IMAGE_SIZE,
    "resize": "center-crop to square, then Lanczos",
    "alpha": "composited on white",
    "version": PREPROCESS_VERSION,
}


class BadImage(ValueError):
    """A file that is not a usable image; its message says why in a few words."""


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode (L, LA, P, RGBA, CMYK, I;16, I, F, ...) to 8-bit RGB, honouring EXIF orientation."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Pillow's convert("L") clips 16-bit values at 255; scale the full 16-bit range instead.
        a = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(a / 257.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        hi = 1.0 if a.size and a.max() <= 1.0 else 255.0
        img = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


def to_model_array(img: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """An opened PIL image to a (size, size, 3) uint8 array.

    Images already at the model's size (all of CIFAKE) pass through untouched. Others are centre-cropped
    to a square (no stretching) and downscaled with Lanczos, which antialiases: plain subsampling would
    alias and invent high-frequency patterns, exactly the cue a fake-detector looks at.
    """
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise BadImage(f"too many pixels ({w}x{h} > {MAX_PIXELS:,})")
    if w == 0 or h == 0:
        raise BadImage("empty image")
    rgb = to_rgb(img)
    if rgb.size != (size, size):
        side = min(rgb.size)
        left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
        rgb = rgb.crop((left, top, left + side, top + side))
        if side != size:
            rgb = rgb.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.shape != (size, size, 3):  # pragma: no cover - defensive; to_rgb always returns RGB
        raise BadImage(f"unexpected decoded shape {arr.shape}")
    return arr


def decode_bytes(data: bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    """Encoded file bytes to a model array; every failure becomes BadImage with a short reason."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise BadImage(f"too many pixels ({w}x{h} > {MAX_PIXELS:,})")
                img.load()
                return to_model_array(img, size)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"too many pixels ({e})".split(". ")[0]) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Truncated or corrupt data: Pillow says "image file is truncated", "broken data stream", ...
        raise BadImage(f"unreadable image ({e})") from None


def from_any(x: Any, size: int = IMAGE_SIZE) -> np.ndarray:
    """A PIL image, an array (HxW, HxWx3/4, uint8 or float in [0,1]) or encoded bytes to a model array."""
    if isinstance(x, Image.Image):
        return to_model_array(x, size)
    if isinstance(x, bytes | bytearray | memoryview):
        return decode_bytes(bytes(x), size)
    if isinstance(x, np.ndarray):
        a = x
        if a.dtype != np.uint8:
            if np.issubdtype(a.dtype, np.floating) and a.size and np.nanmax(a) <= 1.0:
                a = a * 255.0
            a = np.clip(np.nan_to_num(a) + 0.5, 0, 255).astype(np.uint8)
        if a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4)):
            return to_model_array(Image.fromarray(a.squeeze(2) if a.ndim == 3 and a.shape[2] == 1 else a), size)
        raise BadImage(f"array of shape {x.shape} is not an image (want HxW, HxWx3 or HxWx4)")
    raise BadImage(f"cannot read an image from {type(x).__name__}")


def read_and_decode(x: Any, read: Callable[[Any], bytes] | None = None) -> np.ndarray:
    """Read an input and decode it to a model array, or raise BadImage saying why in a few words.

    `x` is a path, encoded bytes, a PIL image or an array; with `read`, `x` is a key that `read(x)` turns into
    bytes (a file of a data source, a zip member, an `InputRef`). Read failures (missing file, permissions, a
    damaged zip member) become BadImage like decode failures, so one bad input is reported and skipped.
    """
    try:
        if read is not None:
            data = read(x)
        elif isinstance(x, str | Path):
            data = Path(x).read_bytes()
        else:
            return from_any(x)
    except BadImage:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise BadImage(f"unreadable file ({e.__class__.__name__}: {e})".replace("\n", " ")) from None
    return decode_bytes(data)
