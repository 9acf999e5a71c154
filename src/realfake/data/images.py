"""Decode any image into the one form the models see: 32x32 RGB uint8.

This is the single place preprocessing lives; training, evaluation, prediction and serving all call
`to_model_array` (or `decode_bytes`, which wraps it), so what a model is fed can never drift. And every door
an image comes through (the data cache, batch prediction, the Detector, the server) reads it with
`read_and_decode`, so the reason a user sees for a bad file never depends on the door.

Files come from strangers, so every step has a bound fixed before any work is done:
- reading: a file or archive member is read whole only up to MAX_FILE_BYTES, checked against its declared
  size first and against the bytes actually read (a zip member can lie), see `read_capped`;
- decoding: an image is refused before its pixels are loaded when width x height x bands x bytes per
  sample exceeds MAX_DECODE_BYTES (a 16-bit or float image holds 2-4x the bytes of an 8-bit one with the
  same pixel count, so a pixel limit alone lets a 120 KB PNG through that unpacks to gigabytes of work);
- converting: high-bit-depth images are reduced to 8 bit in row bands, never as a float64 copy of the whole.
`read_and_decode` joins reading and decoding and turns every failure into BadImage with a short reason;
`read_and_decode_region` also says which part of the input the array shows (`Region`), for prediction rows.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import errno
import functools
import io
import lzma
import os
import stat
import sys
import warnings
import zipfile
import zlib
from collections.abc import Callable, Sequence
from typing import IO, Any, NamedTuple

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from realfake._kernels.jpeg import decoder as jpeg_decoder
from realfake._kernels.jpeg import jpeg_header
from realfake.contract import IMAGE_SIZE

# A decompression bomb (a tiny file that unpacks to gigapixels) is refused before its pixels are read.
MAX_PIXELS = 64_000_000
# ... and so is one that unpacks to too many bytes: every 8-bit RGB image within MAX_PIXELS fits (3 bytes a
# pixel); 4-band and 32-bit images are held to the same memory, i.e. to fewer pixels.
MAX_DECODE_BYTES = 192 * 2**20
# An encoded file bigger than a third of the decode budget (64 MiB) is not read: no compressed image of an
# acceptable size gets near it, and reading it whole would cost its size again in memory.
MAX_FILE_BYTES = MAX_DECODE_BYTES // 3
_READ_CHUNK = 2**20
# High-bit-depth pixels are converted this many at a time: a band costs a few MB in float64, not GBs.
_BAND_PIXELS = 2**18
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


# A judged square more than this many times the model's side is reduced so far that a row says so (`Region.note`).
NOTE_REDUCTION = 4


class Region(NamedTuple):
    """What the model judged of an input: the input's size after EXIF rotation, and the square it was cropped to,
    in input pixels ([left, top, right, bottom]); a row must say this, since a 4000x3000 photo is judged on its
    centre 3000x3000 shrunk ~94x, and a verdict on that is not a verdict on the whole."""

    width: int
    height: int
    left: int
    top: int
    right: int
    bottom: int

    @classmethod
    def whole(cls, size: int = IMAGE_SIZE) -> Region:
        """The region of an input already at the model's size: all of it, unscaled."""
        return cls(size, size, 0, 0, size, size)

    def note(self, size: int = IMAGE_SIZE) -> str | None:
        """One sentence when the judged square is more than NOTE_REDUCTION x the model's side, else None."""
        return reduction_note(self.width, self.height, self.right - self.left, size)


def reduction_note(width: int, height: int, side: int, size: int = IMAGE_SIZE) -> str | None:
    """What a reduction of a `side` x `side` crop of a `width` x `height` input to `size` x `size` loses, in one
    sentence, where it is more than NOTE_REDUCTION x; None otherwise."""
    if side <= NOTE_REDUCTION * size:
        return None
    where = f"whole {side}x{side}" if (width, height) == (side, side) else f"centre {side}x{side} of {width}x{height}"
    factor = side / size
    return (f"reduced {factor:.{0 if factor >= 10 else 1}f}x to {size}x{size} ({where}): generator traces at the "
            "original resolution are lost")


def decoded_bytes(img: Image.Image) -> int:
    """What holding `img`'s pixels costs: width x height x bands x bytes per sample (known from the header)."""
    w, h = img.size
    mode = img.mode
    per_sample = 2 if mode.startswith("I;16") else 4 if mode in ("I", "F") or mode.startswith(("I;32", "F;")) else 1
    return w * h * len(img.getbands()) * per_sample


def header_decoded_bytes(data: bytes) -> int:
    """`decoded_bytes` of encoded image bytes, from the header alone (no pixel is read): what a server counts
    against a request's budget before decoding. 0 when the header cannot be read or is over the pixel limit:
    decoding then fails at once, before any pixel is read, and says why in its own words."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
                return 0 if w * h > MAX_PIXELS else decoded_bytes(img)
    except Exception:  # noqa: BLE001 - any unreadable header is decode's to report, not the budget's
        return 0


def check_decode_budget(img: Image.Image) -> None:
    """Refuse an image whose pixels would cost too much, before they are loaded (header fields only)."""
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise BadImage(f"too many pixels ({w}x{h} > {MAX_PIXELS:,})")
    n = decoded_bytes(img)
    if n > MAX_DECODE_BYTES:
        raise BadImage(f"too large to decode ({w}x{h} {img.mode}: {n:,} bytes > {MAX_DECODE_BYTES:,} budget)")


# The 16-bit -> 8-bit map of PREPROCESS_VERSION 1, v -> round(v / 257), tabulated with the very float64
# expression it always used, so a table lookup (2 bytes in, 1 out) gives byte-identical results.
_U16_TO_U8 = np.clip(np.arange(65536, dtype=np.float64) / 257.0 + 0.5, 0, 255).astype(np.uint8)


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """I;16 / I / F to L with the arithmetic of PREPROCESS_VERSION 1, one band of rows at a time.

    A whole-image float64 copy cost 8 bytes a pixel (docs/performance.md#memory); bands of
    _BAND_PIXELS keep the temporaries at a few MB while every pixel gets exactly the value it always got.
    """
    w, h = img.size
    rows = max(1, _BAND_PIXELS // max(w, 1))
    spans = [(y, min(h, y + rows)) for y in range(0, h, rows)]

    def band(y0: int, y1: int) -> np.ndarray:
        return np.asarray(img.crop((0, y0, w, y1)))

    if img.mode == "F":
        # Unit-range floats are taken as 0..1, others as 0..255 (NaN anywhere means 0..255, as before).
        peak = np.max(np.array([np.max(band(y0, y1)) for y0, y1 in spans] or [np.inf]))
        hi = 1.0 if peak <= 1.0 else 255.0

        def to8(a: np.ndarray) -> np.ndarray:
            return np.clip(a.astype(np.float64) / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
    else:
        # The full 16-bit range, not Pillow's convert("L"), which clips at 255; mode I beyond it saturates.
        def to8(a: np.ndarray) -> np.ndarray:
            return _U16_TO_U8[np.clip(a, 0, 65535) if a.dtype.itemsize > 2 else a]

    out = np.empty((h, w), dtype=np.uint8)
    for y0, y1 in spans:
        out[y0:y1] = to8(band(y0, y1))
    return Image.fromarray(out)


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; an image without one is returned as is (exif_transpose would copy it)."""
    if img.getexif().get(ExifTags.Base.Orientation, 1) in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(img)
    return img


def _to_rgb_or_l(img: Image.Image) -> Image.Image:
    """Upright 8-bit RGB, or L for grey images: resizing L and then replicating it to RGB gives the same
    bytes as replicating first (checked on thousands of sizes), at a quarter of the memory (RGB is 4 B/px)."""
    img = _upright(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _high_bit_depth_to_l(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img if img.mode in ("RGB", "L") else img.convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode (L, LA, P, RGBA, CMYK, I;16, I, F, ...) to 8-bit RGB, honouring EXIF orientation."""
    img = _to_rgb_or_l(img)
    return img.convert("RGB") if img.mode != "RGB" else img


def to_model_array(img: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """An opened PIL image to a (size, size, 3) uint8 array.

    Images already at the model's size (all of CIFAKE) pass through untouched. Others are centre-cropped
    to a square (no stretching) and downscaled with Lanczos, which antialiases: plain subsampling would
    alias and invent high-frequency patterns, exactly the cue a fake-detector looks at.
    """
    return _model_array(img, size)[0]


def _model_array(img: Image.Image, size: int) -> tuple[np.ndarray, Region]:
    """`to_model_array`, and the region it judged (`Region`)."""
    check_decode_budget(img)
    if img.width == 0 or img.height == 0:
        raise BadImage("empty image")
    rgb = _to_rgb_or_l(img)
    width, height = rgb.size  # upright: after the EXIF rotation
    left, top, side = 0, 0, width
    if rgb.size != (size, size):
        side = min(rgb.size)
        if rgb.size != (side, side):  # cropping a square to itself would only copy it
            left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
            rgb = rgb.crop((left, top, left + side, top + side))
        if side != size:
            rgb = rgb.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if rgb.mode != "RGB":
        rgb = rgb.convert("RGB")
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.shape != (size, size, 3):  # pragma: no cover - defensive; to_rgb always returns RGB
        raise BadImage(f"unexpected decoded shape {arr.shape}")
    return arr, Region(width, height, left, top, left + side, top + side)


def decode_bytes(data: bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    """Encoded file bytes to a model array; every failure becomes BadImage with a short reason."""
    return decode_bytes_region(data, size)[0]


def decode_bytes_region(data: bytes, size: int = IMAGE_SIZE) -> tuple[np.ndarray, Region]:
    """`decode_bytes`, and the region of the input the array shows: every door that decodes bytes comes here."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    fast = _small_jpeg(data, size)
    return (fast, Region.whole(size)) if fast is not None else _pillow_region(data, size)


def _decode_with_pillow(data: bytes, size: int) -> np.ndarray:
    """Every format, every mode, EXIF orientation, resizing, and the reason a file is bad."""
    return _pillow_region(data, size)[0]


def _pillow_region(data: bytes, size: int) -> tuple[np.ndarray, Region]:
    """`_decode_with_pillow`, and the region it judged."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                check_decode_budget(img)  # from the header, before a single pixel is decoded
                img.load()
                return _model_array(img, size)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"too many pixels ({e})".split(". ")[0]) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Truncated or corrupt data: Pillow says "image file is truncated", "broken data stream", ...
        raise BadImage(f"unreadable image ({e})") from None


# --- the fast path: a plain 32x32 JPEG, CIFAKE's own kind of file -------------------------------------------
#
# Pillow spends most of a 32x32 JPEG's decode parsing the header in Python, several times libjpeg's own decoding,
# and with the model fused (realfake.models.fused) decoding became much of `realfake predict`'s CPU
# (docs/performance.md#jpeg-decoding). So a JPEG whose header
# says it is exactly the model's size, 8-bit, grey or YCbCr, without EXIF (orientation) or an Adobe marker
# (colour transforms), is decoded by torchvision; everything else, and any file it refuses, takes Pillow's path,
# which also gives the reason a file is bad. Both give the same pixels: checked once per process on test images
# (`_jpeg_decoder`) and on the stand-in's files in the tests; where they differ, or where REALFAKE_KERNELS=0 turns
# realfake's fast paths off (realfake._kernels), the fast path is off.

#
# The fast path needs torch, and that is its price: `import torch` takes seconds of CPU. A process that has
# torch already (every PyTorch model, training, the server's Detector) takes the path from its first file;
# one that has not (an ONNX Runtime job) stays with Pillow unless it is about to decode FAST_JPEG_MIN_IMAGES,
# enough to repay the import (`prepare_jpeg_decoding`: the data cache, batch prediction). torchvision itself is
# never imported for it: its image library (libjpeg's operators) is loaded straight from torchvision's folder
# (realfake._kernels.jpeg) in milliseconds, where `import torchvision` (its ops pull in torch's dynamo compiler) costs
# seconds and, in forked workers, was paid again by each, making small jobs slower than Pillow alone
# (docs/performance.md, Speed). Until that was found, jobs under 100,000 images decoded with Pillow to spare it.
FAST_JPEG_MIN_IMAGES = 100_000
_TORCH = "torch"


def prepare_jpeg_decoding(n_images: int) -> bool:
    """Before decoding `n_images` (and before forking workers, which inherit it): set up torchvision's decoder
    where torch is already imported, or import torch where that many images repay it; returns whether the
    fast path is on."""
    if n_images >= FAST_JPEG_MIN_IMAGES or _TORCH in sys.modules:
        return _jpeg_decoder() is not None
    return False


def _small_jpeg(data: bytes, size: int) -> np.ndarray | None:
    """The model array of a plain size x size JPEG through torchvision's libjpeg, or None for Pillow's path
    (always, in a process without torch: see `prepare_jpeg_decoding`)."""
    if _TORCH not in sys.modules:
        return None
    decode = _jpeg_decoder()
    if decode is None:  # off (REALFAKE_KERNELS=0), missing, or not Pillow's pixels here
        return None
    head = jpeg_header(data)
    if head is None or head[:2] != (size, size) or head[2] not in (1, 3):
        return None
    try:
        return decode(data)
    except RuntimeError:  # damaged: Pillow's path says how
        return None


@functools.cache
def _jpeg_decoder() -> Callable[[bytes], np.ndarray] | None:
    """torchvision's JPEG decoder, if it is there, switched on, and gives Pillow's pixels on this machine's libraries
    (realfake._kernels.jpeg.decoder, checked once per process)."""
    return jpeg_decoder(lambda data: _decode_with_pillow(data, IMAGE_SIZE))


def from_any(x: Any, size: int = IMAGE_SIZE) -> np.ndarray:
    """A PIL image, an array (HxW, HxWx3/4, uint8 or float in [0,1]) or encoded bytes to a model array."""
    return _from_any(x, size)[0]


def _from_any(x: Any, size: int) -> tuple[np.ndarray, Region]:
    """`from_any`, and the region it judged."""
    if isinstance(x, Image.Image):
        return _model_array(x, size)
    if isinstance(x, bytes | bytearray | memoryview):
        return decode_bytes_region(bytes(x), size)
    if isinstance(x, np.ndarray):
        a = x
        if a.dtype != np.uint8:
            if np.issubdtype(a.dtype, np.floating) and a.size and np.nanmax(a) <= 1.0:
                a = a * 255.0
            a = np.clip(np.nan_to_num(a) + 0.5, 0, 255).astype(np.uint8)
        if a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4)):
            return _model_array(Image.fromarray(a.squeeze(2) if a.ndim == 3 and a.shape[2] == 1 else a), size)
        raise BadImage(f"array of shape {x.shape} is not an image (want HxW, HxWx3 or HxWx4)")
    raise BadImage(f"cannot read an image from {type(x).__name__}")


# --- reading: whole files, but never past a cap ------------------------------------------------------

# What a damaged archive member raises: none of it is an OSError, so callers would not catch it otherwise.
ARCHIVE_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, NotImplementedError, RuntimeError)


def read_capped(stream: IO[bytes] | _Descriptor, declared: int | None = None, cap: int = MAX_FILE_BYTES) -> bytes:
    """All of `stream`, read in chunks and refused past `cap` bytes.

    The declared size (a file's st_size, a zip member's file_size) is checked first, so a known-big file
    costs nothing; the bytes actually read are checked too, since a declared size can lie or grow. Chunks are
    sized to the declared size (at least 64 KiB, at most 1 MiB), so a small file is one read and one at its end.
    """
    if declared is not None and declared > cap:
        raise BadImage(f"file too large ({declared:,} bytes > {cap:,} limit)")
    step = _READ_CHUNK if declared is None else min(_READ_CHUNK, max(declared + 1, 2**16))
    chunks: list[bytes] = []
    n = 0
    while chunk := stream.read(min(step, cap + 1 - n)):
        chunks.append(chunk)
        n += len(chunk)
        if n > cap:
            raise BadImage(f"file too large (more than {cap:,} bytes)")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Descriptor:
    """An open file descriptor read with os.read: `read_capped`'s stream for `read_file`."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def read(self, n: int) -> bytes:
        return os.read(self.fd, n)


def read_file(path: str | os.PathLike[str], cap: int = MAX_FILE_BYTES) -> bytes:
    """A file's bytes, up to `cap`; a FIFO or device is refused rather than read (it could block or never end).

    Plain system calls (os.open, os.fstat, os.read) rather than Python's buffered file object, whose overhead was
    a noticeable share of a 32x32 JPEG's read and decode (docs/performance.md#jpeg-decoding). Opened non-blocking, so a
    file swapped for a FIFO after the check still cannot block.
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        if stat.S_ISDIR(st.st_mode):  # as open() says it
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        raise BadImage("not a regular file")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadImage("not a regular file")
        return read_capped(_Descriptor(fd), st.st_size, cap)
    finally:
        os.close(fd)


def read_member(zf: zipfile.ZipFile, name: str, cap: int = MAX_FILE_BYTES) -> bytes:
    """A zip member's bytes, streamed up to `cap`; a damaged member (bad CRC, broken deflate data,
    truncated, encrypted) is BadImage, so it is skipped and listed like any unreadable file.
    A missing member is still KeyError."""
    info = zf.getinfo(name)
    try:
        with zf.open(info) as f:
            return read_capped(f, info.file_size, cap)
    except ARCHIVE_ERRORS as e:
        raise BadImage(f"damaged archive member ({e.__class__.__name__}: {e})".replace("\n", " ")) from None


def read_and_decode(x: Any, read: Callable[[Any], bytes] | None = None) -> np.ndarray:
    """Read an input and decode it to a model array, or raise BadImage saying why in a few words.

    `x` is a path, encoded bytes, a PIL image or an array; with `read`, `x` is a key that `read(x)` turns into
    bytes (a file of a data source, an `InputRef` with `InputReader.read`). Every failure, reading (missing
    file, permissions, a damaged zip member, a file past MAX_FILE_BYTES) or decoding, becomes BadImage with a
    short reason; the caller names the input, so the reason does not repeat the path.
    One bad input is reported and skipped, and never stops a run.
    """
    return read_and_decode_region(x, read)[0]


def decode_all(
    xs: Sequence[Any], read: Callable[[Any], bytes] | None = None
) -> tuple[list[np.ndarray | None], list[str | None], list[Region | None]]:
    """Each input's array, error and region (`read_and_decode_region`), None where it could not be read: one bad
    item in a batch is reported and never sinks the others."""
    arrays: list[np.ndarray | None] = []
    errors: list[str | None] = []
    regions: list[Region | None] = []
    for x in xs:
        try:
            image, region = read_and_decode_region(x, read)
        except BadImage as e:
            arrays.append(None)
            errors.append(str(e))
            regions.append(None)
        else:
            arrays.append(image)
            errors.append(None)
            regions.append(region)
    return arrays, errors, regions


def read_and_decode_region(x: Any, read: Callable[[Any], bytes] | None = None) -> tuple[np.ndarray, Region]:
    """`read_and_decode`, and the region of the input the array shows (`Region`): what prediction rows report,
    so a verdict says which part of the input it is about and how far that part was shrunk."""
    try:
        if read is not None:
            data = read(x)
        elif isinstance(x, str | os.PathLike):
            data = read_file(x)
        else:
            return _from_any(x, IMAGE_SIZE)
    except BadImage:
        raise
    except KeyError:
        raise BadImage("unreadable file (KeyError: not in the archive)") from None
    except zipfile.BadZipFile as e:
        raise BadImage(f"damaged archive ({e})".replace("\n", " ")) from None
    except ARCHIVE_ERRORS as e:
        raise BadImage(f"damaged archive member ({e.__class__.__name__}: {e})".replace("\n", " ")) from None
    except OSError as e:  # missing, permissions, a folder: the system's words
        raise BadImage(f"unreadable file ({e.__class__.__name__}: {e.strerror or e})".replace("\n", " ")) from None
    except ValueError as e:
        raise BadImage(f"unreadable file ({e.__class__.__name__}: {e})".replace("\n", " ")) from None
    return decode_bytes_region(data)
