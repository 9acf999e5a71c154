"""Files and zip members are read only up to a cap tied to the decode budget: the declared size is checked
first and the bytes actually read too, by one helper for training's and predict's readers."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from tests.data.childproc import posix_only, run_child

from realfake.data import images
from realfake.data.images import BadImage

pytestmark = pytest.mark.timeout(180)

MIB = 2**20


# --- reads stop at a cap ---------------------------------------------------------------------------------


def test_file_cap_relates_to_the_decode_budget():
    assert images.MAX_FILE_BYTES == images.MAX_DECODE_BYTES // 3 == 64 * MIB


def test_read_capped_refuses_a_declared_size_without_reading():
    stream = io.BytesIO(b"x" * 5000)
    with pytest.raises(BadImage, match=r"file too large \(5,000 bytes > 1,000 limit\)"):
        images.read_capped(stream, declared=5000, cap=1000)
    assert stream.tell() == 0


def test_read_capped_stops_just_past_the_cap_when_the_declared_size_lies():
    stream = io.BytesIO(b"x" * 50_000)
    with pytest.raises(BadImage, match=r"file too large \(more than 1,000 bytes\)"):
        images.read_capped(stream, declared=10, cap=1000)
    assert stream.tell() == 1001  # read in chunks, never past cap + 1


def test_read_file_is_capped(tmp_path):
    (tmp_path / "big.png").write_bytes(b"\0" * 5000)
    with pytest.raises(BadImage, match="file too large"):
        images.read_file(tmp_path / "big.png", cap=1000)
    assert images.read_file(tmp_path / "big.png") == b"\0" * 5000


@pytest.fixture
def zip_bomb(tmp_path) -> Path:
    """A ~200 KB zip holding one good image and a 200 MiB member (zeros), written as a stream."""
    path = tmp_path / "bomb.zip"
    good = io.BytesIO()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(good, "PNG")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train/REAL/ok.png", good.getvalue())
        with zf.open("train/FAKE/bomb.png", "w", force_zip64=True) as f:
            block = bytes(2**20)
            for _ in range(200):
                f.write(block)
    assert path.stat().st_size < 1_000_000
    return path


@posix_only
def test_zip_member_bomb_refused_by_both_readers_within_bounded_memory(zip_bomb):
    out = run_child("""
from pathlib import Path
from realfake.data.images import BadImage
from realfake.data.inputs import InputReader, InputRef
from realfake.data.sources import Source
from realfake.data.cache import load_dataset
res = {}
base = peak_mb()
def attempt(name, fn):
    try:
        res[name] = f"read {len(fn())} bytes"
    except BadImage as e:
        res[name] = "BadImage: " + str(e)
with Source(Path(sys.argv[1]), "x").open() as read:
    attempt("source", lambda: read("train/FAKE/bomb.png"))
with InputReader() as reader:
    attempt("predict", lambda: reader.read(InputRef(sys.argv[1], "train/FAKE/bomb.png")))
ds = load_dataset(sys.argv[1], workers=1, progress=False, use_cache=False)
res["loaded"], res["skipped"] = ds.paths, ds.skipped
res["mb"] = peak_mb() - base
print(json.dumps(res))
""", str(zip_bomb))
    for reader in ("source", "predict"):
        assert out[reader] == f"BadImage: file too large ({200 * MIB:,} bytes > {64 * MIB:,} limit)", out
    assert out["loaded"] == ["train/REAL/ok.png"]
    assert [s["path"] for s in out["skipped"]] == ["train/FAKE/bomb.png"]
    assert "file too large" in out["skipped"][0]["reason"]
    assert out["mb"] < 50, out  # nothing of the member was inflated (before: +400 MB)


@posix_only
def test_a_file_swapped_for_a_fifo_after_the_check_is_refused_without_blocking(tmp_path, monkeypatch):
    """read_file checks the path, then opens it: a regular file replaced by a FIFO in between must not block the
    reader (it opens non-blocking) and is refused by the check made on what was opened."""
    import os

    regular = tmp_path / "real.jpg"
    regular.write_bytes(b"\xff\xd8\xff")
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # no writer: a blocking open would wait forever
    real_stat = os.stat
    monkeypatch.setattr(images.os, "stat", lambda p, *a, **k: real_stat(regular if str(p) == str(fifo) else p))
    with pytest.raises(BadImage, match="not a regular file"):
        images.read_file(fifo)
