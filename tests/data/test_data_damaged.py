"""One damaged archive member (bad CRC, broken deflate data, broken local header) is skipped and listed like
any unreadable file, in training/evaluation (load_dataset) and in predict; read_and_decode turns every
failure into BadImage with a short reason. The damage is done here, by editing bytes of a valid zip."""

from __future__ import annotations

import io
import struct
import zipfile

import pytest
from PIL import Image

from realfake.data import images
from realfake.data.cache import load_dataset
from realfake.data.images import BadImage
from realfake.data.inputs import InputReader, expand_inputs
from realfake.data.sources import open_source

pytestmark = pytest.mark.timeout(120)


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (value, 0, 255 - value)).save(buf, "PNG")
    return buf.getvalue()


GOOD = ["FAKE/c.png", "REAL/a.png"]
DAMAGED = {
    "REAL/b.png": "deflate data overwritten (zlib.error)",
    "FAKE/d.png": "stored data flipped (bad CRC-32)",
    "FAKE/e.png": "local header signature broken",
    "REAL/f.png": "deflate data flipped mid-stream",
}


@pytest.fixture
def damaged_zip(tmp_path):
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, name in enumerate(sorted([*GOOD, *DAMAGED])):
            zf.writestr(name, png(40 * i), compress_type=zipfile.ZIP_STORED if name == "FAKE/d.png" else None)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = {i.filename: i for i in zf.infolist()}

    def data_at(name: str) -> int:
        h = info[name].header_offset
        name_len, extra_len = struct.unpack("<HH", raw[h + 26 : h + 30])
        return h + 30 + name_len + extra_len

    raw[data_at("REAL/b.png") : data_at("REAL/b.png") + 4] = b"\xff" * 4  # reserved block type
    raw[data_at("FAKE/d.png") + 50] ^= 0xFF  # a pixel byte: zipfile finds the CRC mismatch at the end
    raw[info["FAKE/e.png"].header_offset] ^= 0xFF  # "Bad magic number for file header"
    mid = data_at("REAL/f.png") + info["REAL/f.png"].compress_size // 2
    raw[mid : mid + 6] = bytes(b ^ 0x5A for b in raw[mid : mid + 6])
    path.write_bytes(bytes(raw))
    return path


def test_training_skips_and_lists_damaged_members(damaged_zip):
    ds = load_dataset(damaged_zip, workers=1, progress=False)
    assert ds.paths == GOOD
    reasons = {s["path"]: s["reason"] for s in ds.skipped}
    assert set(reasons) == set(DAMAGED)
    for name, reason in reasons.items():
        assert reason.startswith("damaged archive member ("), (name, reason)
        assert "\n" not in reason and len(reason) < 200


def test_source_reader_raises_bad_image(damaged_zip):
    with open_source(damaged_zip).open() as read:
        for name in DAMAGED:
            with pytest.raises(BadImage, match="damaged archive member"):
                read(name)
        assert read("REAL/a.png").startswith(b"\x89PNG")


def test_predict_skips_and_lists_damaged_members(damaged_zip):
    from realfake.predict import decode_refs  # predict's own decode loop, unchanged: it catches BadImage

    refs = list(expand_inputs([damaged_zip]))
    decoded = dict(zip([r.member for r in refs], decode_refs(refs), strict=True))
    assert sorted(m for m, (arr, err) in decoded.items() if err is None) == GOOD
    for name in DAMAGED:
        arr, err = decoded[name]
        assert arr is None and err.startswith("damaged archive member"), (name, err)


def test_predict_reader_raises_bad_image_for_a_damaged_archive(tmp_path, damaged_zip):
    refs = list(expand_inputs([damaged_zip]))
    truncated = tmp_path / "cut.zip"
    truncated.write_bytes(damaged_zip.read_bytes()[:100])  # its central directory is gone
    with InputReader() as reader:
        with pytest.raises(BadImage, match="damaged archive member"):
            reader.read(next(r for r in refs if r.member == "REAL/b.png"))
        with pytest.raises(BadImage, match="damaged archive"):
            reader.read(type(refs[0])(str(truncated), "REAL/a.png"))


# --- read_and_decode: one function from a file to an array, one exception ---------------------------------


def test_read_and_decode_reasons(tmp_path, damaged_zip):
    rd = images.read_and_decode
    (tmp_path / "ok.png").write_bytes(png(7))
    (tmp_path / "text.png").write_bytes(b"hello")
    assert rd(tmp_path / "ok.png").shape == (32, 32, 3)
    cases = {  # short, one line, and without the path: the caller names the input
        "unreadable file (FileNotFoundError: No such file or directory)": lambda: rd(tmp_path / "missing.png"),
        "unreadable file (IsADirectoryError: Is a directory)": lambda: rd(str(tmp_path)),
        "not an image": lambda: rd(tmp_path / "text.png"),
        "unreadable file (PermissionError: Permission denied)":
            lambda: rd("x.png", lambda p: _raise(PermissionError(13, "Permission denied", p))),
    }
    for reason, call in cases.items():
        with pytest.raises(BadImage) as e:
            call()
        assert str(e.value) == reason
    with InputReader() as reader:
        refs = {r.member: r for r in expand_inputs([damaged_zip])}
        assert rd(refs["REAL/a.png"], reader.read).shape == (32, 32, 3)
        with pytest.raises(BadImage, match=r"^damaged archive member \(BadZipFile: Bad CRC-32"):
            rd(refs["FAKE/d.png"], reader.read)
        with pytest.raises(BadImage, match="not in the archive"):
            rd(type(refs["REAL/a.png"])(str(damaged_zip), "REAL/nope.png"), reader.read)
        with pytest.raises(BadImage, match=r"^damaged archive member \(error: Error -3"):
            rd(refs["REAL/b.png"], reader.read)
    with open_source(damaged_zip).open() as read:  # a source's reader
        assert rd("FAKE/c.png", read).shape == (32, 32, 3)
        with pytest.raises(BadImage, match=r"^damaged archive member \(BadZipFile: Bad magic number"):
            rd("FAKE/e.png", read)


def test_read_and_decode_too_big(tmp_path, monkeypatch):
    (tmp_path / "big.png").write_bytes(b"\0" * 2000)
    monkeypatch.setattr(images.read_file, "__defaults__", (1000,))
    with pytest.raises(BadImage, match=r"^file too large \(2,000 bytes > 1,000 limit\)"):
        images.read_and_decode(tmp_path / "big.png")


def _raise(e: BaseException):
    raise e
