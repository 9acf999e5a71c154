"""The decoded-data cache: bad files skipped with reasons, entries reused, and invalidated when they should be."""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from realfake.data.cache import Dataset, cache_root, check_two_classes, load_dataset, stratified_subset
from realfake.data.sources import Item
from realfake.errors import RealfakeError

REAL, FAKE = 0, 1


def png(colour, size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def jpeg_noise(seed=0) -> bytes:
    a = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG")
    return buf.getvalue()


def huge_png_header(side=20_000) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


BAD = {
    "train/FAKE/empty.jpg": (b"", "empty"),
    "train/REAL/text.jpg": (b"this is not an image\n", "not an image"),
    "test/FAKE/truncated.jpg": (jpeg_noise()[:600], "unreadable"),
    "test/REAL/huge.png": (huge_png_header(), "too many pixels"),
}


def make_good(root):
    """4 REAL (red, shades) and 4 FAKE (blue, shades), over train and test."""
    files = {}
    for i in range(4):
        split = "train" if i < 3 else "test"
        files[f"{split}/REAL/r{i}.png"] = png((200 + i, 0, 0))
        files[f"{split}/FAKE/f{i}.png"] = png((0, 0, 200 + i), size=(64, 48))
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def add_bad(root):
    for rel, (data, _) in BAD.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def load(data, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("workers", 1)
    return load_dataset(data, **kw)


def test_cache_root_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("REALFAKE_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("REALFAKE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "realfake"


def test_bad_files_skipped_with_reasons(tmp_path):
    root = add_bad(make_good(tmp_path / "data"))
    ds = load(root)
    assert len(ds) == 8
    assert ds.images.shape == (8, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64
    for path, label, img in zip(ds.paths, ds.labels, ds.images, strict=True):
        want = REAL if "/REAL/" in path else FAKE
        assert label == want
        assert img[..., 0].mean() > 190 if want == REAL else img[..., 2].mean() > 190
    rep = ds.report()
    assert rep["n_images"] == 8
    assert rep["per_class"] == {"REAL": 4, "FAKE": 4}
    assert rep["per_split_folder"] == {"test": 2, "train": 6}
    assert rep["n_skipped"] == len(BAD)
    reasons = {s["path"]: s["reason"] for s in rep["skipped"]}
    assert set(reasons) == set(BAD)
    for path, (_, why) in BAD.items():
        assert why in reasons[path], (path, reasons[path])
    assert not set(ds.paths) & set(BAD)


def test_second_load_comes_from_cache(tmp_path):
    root = add_bad(make_good(tmp_path / "data"))
    first = load(root)
    assert not first.from_cache
    second = load(root)
    assert second.from_cache
    assert second.key == first.key
    assert np.array_equal(np.asarray(second.images), first.images)
    assert np.array_equal(second.labels, first.labels)
    assert second.paths == first.paths
    assert second.splits == first.splits
    assert second.sources == first.sources
    assert second.report()["skipped"] == first.report()["skipped"]
    assert second.report() == first.report()


def test_use_cache_false_neither_reads_nor_writes(tmp_path):
    root = make_good(tmp_path / "data")
    ds = load(root, use_cache=False)
    assert not ds.from_cache
    assert not (cache_root() / "datasets" / ds.key).exists()
    load(root)
    assert not load(root, use_cache=False).from_cache


def test_cache_entry_written_atomically(tmp_path):
    root = make_good(tmp_path / "data")
    ds = load(root)
    entries = sorted(p.name for p in (cache_root() / "datasets").iterdir())
    assert entries == [ds.key]
    load(root, limit=4)
    leftovers = [p for p in (cache_root() / "datasets").iterdir() if p.name.endswith((".tmp", ".old"))]
    assert leftovers == []
    assert all(not p.name.startswith(".") for p in cache_root().rglob("*"))


def test_adding_a_file_invalidates(tmp_path):
    root = make_good(tmp_path / "data")
    first = load(root)
    (root / "train/REAL/new.png").write_bytes(png((250, 0, 0)))
    second = load(root)
    assert second.key != first.key
    assert not second.from_cache
    assert len(second) == len(first) + 1
    assert "train/REAL/new.png" in second.paths


def test_removing_a_file_invalidates(tmp_path):
    root = make_good(tmp_path / "data")
    first = load(root)
    (root / "train/REAL/r0.png").unlink()
    second = load(root)
    assert second.key != first.key and not second.from_cache
    assert "train/REAL/r0.png" not in second.paths


def test_modifying_a_file_invalidates(tmp_path):
    root = make_good(tmp_path / "data")
    first = load(root)
    target = root / "train/REAL/r0.png"
    old = target.stat()
    target.write_bytes(png((0, 255, 0)))
    os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns + 5_000_000_000))
    second = load(root)
    assert second.key != first.key
    assert not second.from_cache
    i = second.paths.index("train/REAL/r0.png")
    assert second.images[i, 0, 0].tolist() == [0, 255, 0]


def test_touching_a_file_invalidates(tmp_path):
    root = make_good(tmp_path / "data")
    first = load(root)
    target = root / "test/FAKE/f3.png"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert load(root).key != first.key


def test_limit_and_seed_change_the_key(tmp_path):
    root = make_good(tmp_path / "data")
    full = load(root)
    four = load(root, limit=4)
    assert four.key != full.key and len(four) == 4
    assert load(root, limit=6).key not in (full.key, four.key)
    assert load(root, limit=4, seed=1).key != four.key
    assert load(root, limit=4).from_cache
    assert load(root, seed=123).key == full.key  # the seed only matters with a limit


def test_limit_keeps_classes_balanced(tmp_path):
    ds = load(make_good(tmp_path / "data"), limit=4)
    assert Counter(ds.labels.tolist()) == {REAL: 2, FAKE: 2}


def test_zip_source_cached_and_invalidated(tmp_path):
    import zipfile

    root = make_good(tmp_path / "data")
    zpath = tmp_path / "data.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(root.rglob("*.png")):
            zf.write(p, p.relative_to(root).as_posix())
    from_dir = load(root)
    first = load(zpath)
    assert first.paths == from_dir.paths
    assert np.array_equal(first.images, from_dir.images)
    assert load(zpath).from_cache
    with zipfile.ZipFile(zpath, "a") as zf:
        zf.writestr("train/FAKE/extra.png", png((0, 0, 255)))
    again = load(zpath)
    assert again.key != first.key and len(again) == len(first) + 1


def test_damaged_cache_entry_is_rebuilt(tmp_path):
    root = make_good(tmp_path / "data")
    ds = load(root)
    (cache_root() / "datasets" / ds.key / "meta.json").write_text("{ not json")
    again = load(root)
    assert not again.from_cache
    assert np.array_equal(again.images, ds.images)
    assert sorted(p.name for p in (cache_root() / "datasets").iterdir()) == [ds.key]  # no .old/.tmp left
    assert load(root).from_cache


def test_all_bad_raises(tmp_path):
    root = add_bad(tmp_path / "data")
    with pytest.raises(RealfakeError, match="no usable images"):
        load(root)


def test_no_label_folders_raises(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.png").write_bytes(png((1, 2, 3)))
    with pytest.raises(RealfakeError):
        load(tmp_path / "d")


@pytest.mark.parametrize(("present", "missing"), [("REAL", "FAKE"), ("FAKE", "REAL")])
def test_single_class(tmp_path, present, missing):
    root = tmp_path / "data"
    (root / present).mkdir(parents=True)
    for i in range(3):
        (root / present / f"{i}.png").write_bytes(png((i, i, i)))
    ds = load(root)
    with pytest.raises(RealfakeError, match=missing):
        check_two_classes(ds)


def test_class_unreadable_raises(tmp_path):
    root = make_good(tmp_path / "data")
    for p in (root / "train/FAKE").iterdir():
        p.write_bytes(b"")
    for p in (root / "test/FAKE").iterdir():
        p.write_bytes(b"")
    ds = load(root)
    with pytest.raises(RealfakeError, match="FAKE"):
        check_two_classes(ds)


def test_two_classes_pass(tmp_path):
    check_two_classes(load(make_good(tmp_path / "data")))


def test_mini_zip_loads_and_reloads_as_memmap(mini_zip):
    ds = load_dataset(mini_zip, progress=False)  # default workers: exercises the process pool
    assert not ds.from_cache
    assert len(ds) == 2500 and ds.images.shape == (2500, 32, 32, 3)
    assert ds.report()["per_class"] == {"REAL": 1250, "FAKE": 1250}
    assert ds.report()["per_split_folder"] == {"test": 500, "train": 2000}
    assert ds.skipped == []
    assert ds.images.std() > 10  # real pixels, not the zeros the buffer starts as
    assert all(("/REAL/" in p) == (lbl == REAL) for p, lbl in zip(ds.paths, ds.labels, strict=True))

    again = load(mini_zip)
    assert again.from_cache
    assert isinstance(again.images, np.memmap) or getattr(again.images, "filename", None)
    assert not again.images.flags.writeable
    assert np.array_equal(np.asarray(again.images), ds.images)
    assert np.array_equal(again.labels, ds.labels)


def test_workers_give_same_result(tmp_path, monkeypatch):
    import realfake.data.cache as cache_mod

    monkeypatch.setattr(cache_mod, "CHUNK", 3)
    root = add_bad(make_good(tmp_path / "data"))
    one = load(root, workers=1, use_cache=False)
    two = load(root, workers=2, use_cache=False)
    assert one.paths == two.paths and one.skipped == two.skipped
    assert np.array_equal(one.images, two.images)


# --- stratified_subset -------------------------------------------------------------------------


def items_for_subset():
    items = []
    for split, n_real, n_fake in (("train", 700, 300), ("test", 150, 50), (None, 40, 60)):
        items += [Item(f"{split}/REAL/{i:04d}.jpg", REAL, split) for i in range(n_real)]
        items += [Item(f"{split}/FAKE/{i:04d}.jpg", FAKE, split) for i in range(n_fake)]
    return sorted(items, key=lambda it: it.path)


def groups(items):
    return Counter((it.split, it.label) for it in items)


@pytest.mark.parametrize("limit", [10, 97, 333, 1000, 1299])
def test_subset_exact_size_and_proportions(limit):
    items = items_for_subset()
    sub = stratified_subset(items, limit, seed=0)
    assert len(sub) == limit
    assert len(set(sub)) == limit and set(sub) <= set(items)
    full = groups(items)
    got = groups(sub)
    for g, n in full.items():
        assert abs(got[g] - limit * n / len(items)) <= 1, (g, got[g])
    assert [it.path for it in sub] == sorted(it.path for it in sub)


def test_subset_deterministic_and_seeded():
    items = items_for_subset()
    a = stratified_subset(items, 200, seed=7)
    assert stratified_subset(items, 200, seed=7) == a
    assert stratified_subset(list(items), 200, seed=7) == a
    assert stratified_subset(items, 200, seed=8) != a


def test_subset_limit_at_or_above_size_returns_all():
    items = items_for_subset()
    assert stratified_subset(items, len(items), seed=0) == items
    assert stratified_subset(items, len(items) + 5, seed=0) == items


def test_dataset_report_counts_sources():
    ds = Dataset(
        images=np.zeros((3, 32, 32, 3), np.uint8),
        labels=np.array([0, 1, 1]),
        paths=["REAL/a", "FAKE/sd/b", "FAKE/mj/c"],
        splits=[None, None, None],
        sources=[None, "sd", "mj"],
        source_name="x",
        key="k",
    )
    rep = ds.report()
    assert rep["sources"] == {"mj": 1, "sd": 1}
    assert rep["per_split_folder"] == {"unsplit": 3}
    assert rep["per_class"] == {"REAL": 1, "FAKE": 2}
    assert rep["n_skipped"] == 0
