"""torchvision's libjpeg operators, reached without importing torchvision, and the JPEG header reader that picks
the files they decode.

Why it is fenced: the operators are torchvision's compiled image library, found in its package folder by file name
(`image_stable` in 0.29, `image` before) and loaded as torchvision loads it, then called as registered operators
(`torch.ops.image.decode_jpeg`, `encode_jpeg`): none of that is public, and each name has already changed once.
`import torchvision` costs far more than loading the library (it pulls in torch._dynamo, again in every forked
worker), and its Python around the operator was a fifth of a 32x32 file's read and decode (docs/performance.md,
Speed). So the operators are used only where they give the reference's pixels on probe images (`decoder`),
or run at all (`roundtrip_codec`); torchvision's public functions come next (only where torchvision is imported
anyway, for decoding), and Pillow, the reference, last. REALFAKE_KERNELS=0 leaves decoding to Pillow alone and
training's JPEG round trip to the public functions.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import functools
import io
import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from realfake._kernels import enabled, turned_off

TORCHVISION_RGB = 3  # torchvision's ImageReadMode.RGB, as its operators take it
# torchvision's image library by the names it has had: `image_stable` (0.29), `image` (before).
_IMAGE_LIBRARIES = ("image_stable", "image")
_TORCHVISION_IO = "torchvision.io"
_SOF_PLAIN = (0xC0, 0xC1, 0xC2)  # baseline, extended and progressive Huffman frames
_NO_LENGTH = (0x01, *range(0xD0, 0xD8))  # markers without a length field


def jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, components) of a plain 8-bit JPEG, read from its markers up to the first scan, or None
    where Pillow's path must decide: not a JPEG, an EXIF or Adobe segment, a lossless, arithmetic-coded or
    12-bit frame, or markers that do not parse.

    It reads bytes in place rather than slicing each segment out, which halved its cost
    (docs/performance.md#jpeg-decoding)."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    frame = None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _NO_LENGTH:
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        end = i + 2 + length  # the segment is data[i + 4 : end]
        if length < 2 or end > n:
            return None
        if marker == 0xDA:  # start of scan: the header is over
            return frame
        if marker in (0xE1, 0xEE):
            if data.startswith(b"Exif" if marker == 0xE1 else b"Adobe", i + 4, end):
                return None
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header (SOFn)
            if frame is not None or marker not in _SOF_PLAIN or length < 8 or data[i + 4] != 8:
                return None
            frame = ((data[i + 5] << 8) | data[i + 6], (data[i + 7] << 8) | data[i + 8], data[i + 9])
        i = end
    return None


def quiet_torchvision_io() -> None:
    """torchvision 0.29 announces that its image decoding and encoding will move to TorchCodec (not a dependency
    here) and warns at every call of its public functions; while they are there they are a fallback, and when
    they go Pillow's path is the only one."""
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                            category=DeprecationWarning)


@functools.cache
def image_operators() -> Any | None:
    """torchvision's libjpeg operators (decode_jpeg, encode_jpeg), registered without importing torchvision, or
    None where its image library cannot be found or loaded.

    The library is found as torchvision finds it (an extension module in its package folder, by name) and
    loaded through torch's operator-library loader, as torchvision does: so a later `import torchvision` loads the
    same file, which the dynamic loader hands back without registering anything twice."""
    import importlib.machinery
    import importlib.util

    import torch

    def registered() -> Any | None:
        ops = torch.ops.image
        return ops if getattr(ops, "decode_jpeg", None) is not None else None

    ops = registered()
    if ops is not None:  # torchvision imported, or loaded here before
        return ops
    try:
        spec = importlib.util.find_spec("torchvision")  # finds the package without importing it
    except (ImportError, ValueError):
        return None
    folders = list(spec.submodule_search_locations or ()) if spec is not None else []
    loader = (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES)
    for folder in folders:
        for name in _IMAGE_LIBRARIES:
            found = importlib.machinery.FileFinder(folder, loader).find_spec(name)
            if found is None or found.origin is None:
                continue
            try:
                torch.ops.load_library(found.origin)
            except (OSError, RuntimeError):  # built for another torch, or a missing libjpeg
                continue
            ops = registered()
            if ops is not None:
                return ops
    return None


def decode_jpeg_operator() -> Callable[..., Any] | None:
    """torchvision's registered JPEG decoding operator, or None without one."""
    ops = image_operators()
    return None if ops is None else ops.decode_jpeg


def decode_direct(op: Callable[..., Any]) -> Callable[[bytes], np.ndarray]:
    """A decoder of JPEG bytes to (H, W, 3) uint8 through the registered operator `op`."""
    import torch

    def direct(data: bytes) -> np.ndarray:
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return np.ascontiguousarray(op(raw, TORCHVISION_RGB, False).permute(1, 2, 0).numpy())

    return direct


def decode_public(data: bytes) -> np.ndarray:
    """JPEG bytes to (H, W, 3) uint8 through torchvision's public `decode_jpeg` (imports torchvision)."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return np.ascontiguousarray(decode_jpeg(raw, mode=ImageReadMode.RGB).permute(1, 2, 0).numpy())


def decoder(reference: Callable[[bytes], np.ndarray]) -> Callable[[bytes], np.ndarray] | None:
    """The fastest JPEG decoder that gives `reference`'s pixels on `check_samples` (torchvision's operator called
    directly, then its public function where torchvision is imported anyway), or None: switched off, or none
    agrees, and `reference` (Pillow) decodes."""
    if not enabled("jpeg_decode"):
        return None
    if _TORCHVISION_IO in sys.modules:
        quiet_torchvision_io()
    op = decode_jpeg_operator()
    public = decode_public if _TORCHVISION_IO in sys.modules else None
    samples = check_samples()

    def agrees(decode: Callable[[bytes], np.ndarray]) -> bool:
        try:
            return all(np.array_equal(decode(b), reference(b)) for b in samples)
        except (RuntimeError, ValueError, TypeError, AttributeError, ImportError):
            return False

    candidates = ([decode_direct(op)] if op is not None else []) + ([public] if public is not None else [])
    chosen = next((d for d in candidates if agrees(d)), None)
    if chosen is None:
        turned_off("jpeg_decode", "torchvision's JPEG decoder is missing or gives other pixels than Pillow")
    elif chosen is public:
        turned_off("jpeg_decode", "torchvision's operator is missing or disagrees: its public decode_jpeg runs")
    return chosen


def check_samples() -> list[bytes]:
    """32x32 JPEGs as Pillow writes them, in the encodings a decoder must get right (4:2:0, 4:4:4, progressive,
    grey, two qualities)."""
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.integers(-12, 13, (32, 32, 3)), axis=1) % 256
    samples = []
    for mode, options in (("RGB", {"quality": 75}), ("RGB", {"quality": 95, "subsampling": 0}),
                          ("RGB", {"quality": 85, "progressive": True}), ("L", {"quality": 90})):
        img = Image.fromarray(smooth.astype(np.uint8)).convert(mode)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", **options)
        samples.append(buf.getvalue())
    return samples


Codec = Callable[[Any, int], np.ndarray]  # ((H, W, 3) uint8 tensor, quality) -> the JPEG round trip's pixels


def roundtrip_direct(img: Any, quality: int) -> np.ndarray:
    """A (H, W, 3) uint8 tensor JPEG-encoded at `quality` and decoded again by the registered operators."""
    ops = image_operators()
    encoded = ops.encode_jpeg(img.permute(2, 0, 1), quality)
    return ops.decode_jpeg(encoded, TORCHVISION_RGB, False).permute(1, 2, 0).numpy()


def roundtrip_public(img: Any, quality: int) -> np.ndarray:
    """`roundtrip_direct` through torchvision's public functions (imports torchvision)."""
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

    encoded = encode_jpeg(img.permute(2, 0, 1), quality=quality)
    return decode_jpeg(encoded, mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()


def roundtrip_codec(fallback: Codec) -> Codec:
    """The first JPEG round trip that runs on a probe: the registered operators (switched on, and loaded), then
    torchvision's public functions, else `fallback` (Pillow's: the same library and settings, slower)."""
    import torch

    quiet_torchvision_io()
    fast = enabled("jpeg_roundtrip")
    if fast and image_operators() is None:
        turned_off("jpeg_roundtrip", "torchvision's image library cannot be found or loaded")
        fast = False
    probe = torch.zeros(8, 8, 3, dtype=torch.uint8)
    for codec in ((roundtrip_direct,) if fast else ()) + (roundtrip_public,):
        try:
            codec(probe, 75)
            return codec
        except (ImportError, RuntimeError, AttributeError, TypeError) as e:  # no libjpeg, or not these calls
            if codec is roundtrip_direct:
                turned_off("jpeg_roundtrip", f"torchvision's operators fail ({type(e).__name__})")
    return fallback
