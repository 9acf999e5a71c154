"""The fast JPEG path (images._small_jpeg): plain 32x32 JPEGs decode through torchvision to exactly Pillow's
pixels; everything else, and every damaged file, keeps Pillow's path and its reasons."""

from __future__ import annotations

import contextlib
import io
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from tests.conftest import SHARED_DATA
from tests.data.jpegtools import jpeg, picture

from realfake._kernels import jpeg as kernel
from realfake._kernels.jpeg import jpeg_header
from realfake.data import images
from realfake.data.images import BadImage, decode_bytes


@pytest.fixture(autouse=True)
def _needs_the_fast_decoder() -> None:
    if images._jpeg_decoder() is None:
        pytest.skip("torchvision's JPEG decoder is missing or differs from Pillow's here, or REALFAKE_KERNELS=0: "
                    "the fast path is off")


def _spied(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Record which inputs the fast path decoded."""
    taken: list[bytes] = []
    real = images._small_jpeg

    def spy(data: bytes, size: int) -> np.ndarray | None:
        out = real(data, size)
        if out is not None:
            taken.append(data)
        return out

    monkeypatch.setattr(images, "_small_jpeg", spy)
    return taken


def test_the_stand_ins_jpegs_decode_to_pillows_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every 50th file of the stand-in and of the held-out generator (2,600 JPEGs; all 130,000 matched when the
    path was written)."""
    taken = _spied(monkeypatch)
    n = 0
    for name in ("standin-cifake.zip", "ganC-fake.zip"):
        if not (SHARED_DATA / name).is_file():
            pytest.skip(f"stand-in data not found at {SHARED_DATA} (set REALFAKE_SHARED_DATA)")
        with zipfile.ZipFile(SHARED_DATA / name) as zf:
            for member in [m for m in zf.namelist() if not m.endswith("/")][::50]:
                data = zf.read(member)
                assert np.array_equal(decode_bytes(data), images._decode_with_pillow(data, 32)), member
                n += 1
    assert n > 2000 and len(taken) == n  # ...and every one of them went the fast way


@pytest.mark.parametrize("options", [{"quality": 30}, {"quality": 95, "subsampling": 0}, {"subsampling": 1},
                                     {"progressive": True}, {"optimize": True}])
def test_encodings_pillow_writes_match(options: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = _spied(monkeypatch)
    for mode in ("RGB", "L"):
        data = jpeg(picture(seed=3).convert(mode), **options)
        assert jpeg_header(data) == (32, 32, 3 if mode == "RGB" else 1)
        assert np.array_equal(decode_bytes(data), images._decode_with_pillow(data, 32))
    assert len(taken) == 2


def test_what_the_fast_path_leaves_to_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = decode_bytes(jpeg(picture(32, 32)))
    taken = _spied(monkeypatch)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate
    rotated = jpeg(picture(32, 32), exif=exif.tobytes())
    assert jpeg_header(rotated) is None
    upright = decode_bytes(rotated)
    assert np.array_equal(upright, images._decode_with_pillow(rotated, 32))
    assert not np.array_equal(upright, plain)  # the orientation was applied
    cmyk = jpeg(picture().convert("CMYK"))  # Pillow writes an Adobe marker
    assert jpeg_header(cmyk) is None and decode_bytes(cmyk).shape == (32, 32, 3)
    bigger = jpeg(picture(64, 48))
    assert jpeg_header(bigger) == (48, 64, 3) and decode_bytes(bigger).shape == (32, 32, 3)  # resized by Pillow
    png = io.BytesIO()
    picture().save(png, "PNG")
    assert jpeg_header(png.getvalue()) is None
    assert taken == []


@pytest.mark.parametrize("damage", ["truncated", "flipped", "header cut"])
def test_damaged_jpegs_get_pillows_reason(damage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytearray(jpeg(picture(seed=5)))
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped":
        data[len(data) // 2] ^= 0xFF
        data[len(data) // 2 + 1] ^= 0x55
    else:
        data = data[:40]
    taken = _spied(monkeypatch)
    try:
        want = images._decode_with_pillow(bytes(data), 32)
    except BadImage as e:
        with pytest.raises(BadImage) as got:
            decode_bytes(bytes(data))
        assert str(got.value) == str(e)
    else:  # a flip Pillow decodes anyway: both paths must then agree on the pixels
        assert np.array_equal(decode_bytes(bytes(data)), want)
    assert damage != "header cut" or (jpeg_header(bytes(data)) is None and taken == [])


def test_a_decoder_that_disagrees_with_pillow_is_never_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """The once-per-process check is what keeps a different libjpeg from changing what the models see: torchvision's
    operator called directly is checked first, its public function next (only where torchvision is imported
    anyway), and Pillow decodes when neither agrees."""
    import torchvision.io

    data = jpeg(picture())
    want = images._decode_with_pillow(data, 32)
    real_op, real_public = kernel.decode_jpeg_operator(), torchvision.io.decode_jpeg
    images._jpeg_decoder.cache_clear()
    try:
        assert images._jpeg_decoder().__name__ == "direct"  # the operator, where it agrees
        monkeypatch.setattr(kernel, "decode_jpeg_operator", lambda: lambda *a: real_op(*a) ^ 1)
        images._jpeg_decoder.cache_clear()
        fallback = images._jpeg_decoder()
        assert fallback.__name__ == "decode_public" and np.array_equal(fallback(data), want)
        monkeypatch.setattr(kernel, "_TORCHVISION_IO", "not.imported")  # the public function only where imported
        images._jpeg_decoder.cache_clear()
        assert images._jpeg_decoder() is None
        monkeypatch.setattr(kernel, "_TORCHVISION_IO", "torchvision.io")
        monkeypatch.setattr(kernel, "decode_jpeg_operator", lambda: None)  # a torchvision without the operator
        images._jpeg_decoder.cache_clear()
        assert images._jpeg_decoder().__name__ == "decode_public"
        monkeypatch.setattr(torchvision.io, "decode_jpeg", lambda *a, **k: real_public(*a, **k) ^ 1)
        images._jpeg_decoder.cache_clear()
        assert images._jpeg_decoder() is None
        assert np.array_equal(decode_bytes(data), want)
    finally:
        monkeypatch.undo()
        images._jpeg_decoder.cache_clear()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 1200))
def test_the_header_reader_takes_any_bytes(tail: bytes, cut: int) -> None:
    """Strangers' bytes: the marker walk ends, never raises, and decode_bytes only ever says BadImage."""
    for data in (b"\xff\xd8\xff" + tail, jpeg(picture(seed=7))[:cut] + tail):
        head = jpeg_header(data)
        assert head is None or (len(head) == 3 and all(isinstance(v, int) for v in head))
        with contextlib.suppress(BadImage):
            assert decode_bytes(data).shape == (32, 32, 3)


_GATE = """
import io, sys
import numpy as np
from PIL import Image
from realfake.data import images
from realfake.predict import decode_chunk
buf = io.BytesIO()
Image.fromarray(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)).save(buf, "JPEG")
data = buf.getvalue()
from realfake._kernels.jpeg import jpeg_header
assert jpeg_header(data) == (32, 32, 3)
seen = []
real = images._jpeg_decoder
images._jpeg_decoder = lambda: seen.append(1) or real()
first = images.decode_bytes(data)
small = images.prepare_jpeg_decoding(1000)
print("before", "torch" in sys.modules, len(seen), small)
large = images.prepare_jpeg_decoding(images.FAST_JPEG_MIN_IMAGES)
after = images.decode_bytes(data)
print("after", "torch" in sys.modules, large, np.array_equal(first, after), "torchvision" in sys.modules)
"""

_WITH_TORCH = """
import io, sys
import numpy as np
import torch
from PIL import Image
from realfake._kernels import jpeg as kernel
from realfake.data import images
from realfake.data.batches import _jpeg_codec, jpeg_roundtrip
if sys.argv[1] == "missing":
    kernel._IMAGE_LIBRARIES = ("no_such_library",)
buf = io.BytesIO()
Image.fromarray(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)).save(buf, "JPEG")
data = buf.getvalue()
taken = images._small_jpeg(data, 32) is not None
same = np.array_equal(images.decode_bytes(data), images._decode_with_pillow(data, 32))
jpeg_roundtrip(np.zeros((2, 32, 32, 3), np.uint8), 50)
print(taken, same, images.prepare_jpeg_decoding(10), _jpeg_codec().__name__, "torchvision" in sys.modules)
"""


def _script(code: str, *args: str) -> list[str]:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_a_process_without_torch_imports_it_only_for_a_job_that_repays_it() -> None:
    """`import torch` costs about 2 s of CPU, more than the fast path saves on a few thousand files: an ONNX
    Runtime job decodes with Pillow until a caller about to decode FAST_JPEG_MIN_IMAGES prepares the decoder,
    and even then torchvision itself is not imported."""
    assert _script(_GATE) == ["before", "False", "0", "False", "after", "True", "True", "True", "False"]


def test_with_torch_the_fast_path_is_on_from_the_first_file_without_importing_torchvision() -> None:
    """torchvision's image library is loaded by itself (`image_operators`), for decoding and for training's JPEG
    round trip; where it cannot be found, Pillow decodes and the round trip falls back to torchvision's public
    functions, which import it."""
    assert _script(_WITH_TORCH, "found") == ["True", "True", "True", "roundtrip_direct", "False"]
    assert _script(_WITH_TORCH, "missing") == ["False", "True", "False", "roundtrip_public", "True"]
