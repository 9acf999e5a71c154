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


# --- streaming build: bounded memory, same bytes -----------------------------------------------


def zip_with(path, members):
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def expected_by_hand(data):
    """What a build must give, file by file through the one decoder: (images, labels, paths, skipped)."""
    from realfake.data.images import BadImage, read_and_decode
    from realfake.data.sources import open_source

    source = open_source(data)
    rows, labels, paths, skipped = [], [], [], []
    with source.open() as read:
        for it in source.items():
            try:
                rows.append(read_and_decode(it.path, read))
                labels.append(it.label)
                paths.append(it.path)
            except BadImage as e:
                skipped.append({"path": it.path, "reason": str(e)})
    return np.stack(rows), np.array(labels, np.int64), paths, skipped


def test_streamed_build_gives_what_decoding_each_file_gives(mini_zip, tmp_path, monkeypatch):
    """Many chunks (two workers), bad files among them: the kept rows, in order, and np.save's very bytes."""
    import zipfile

    import realfake.data.cache as cache_mod

    with zipfile.ZipFile(mini_zip) as zf:
        members = {n: zf.read(n) for n in sorted(zf.namelist())[::8] if not n.endswith("/")}
    bad = {"test/FAKE/ bad first.jpg": b"", "train/FAKE/0005 (bad).jpg": b"not an image",
           "train/REAL/zz last.jpg": jpeg_noise()[:600]}
    data = zip_with(tmp_path / "mixed.zip", {**members, **bad})
    monkeypatch.setattr(cache_mod, "CHUNK", 16)
    images, labels, paths, skipped = expected_by_hand(data)
    assert len(paths) == len(members) > 200 and [s["path"] for s in skipped] == sorted(bad)

    ds = load_dataset(data, workers=2, progress=False)
    assert not ds.from_cache and not ds.images.flags.writeable  # the finished entry, memory-mapped
    assert np.array_equal(ds.images, images) and ds.labels.dtype == np.int64
    assert np.array_equal(ds.labels, labels) and ds.paths == paths and ds.skipped == skipped
    saved = io.BytesIO()
    np.save(saved, images)
    assert (cache_root() / "datasets" / ds.key / "images.npy").read_bytes() == saved.getvalue()
    for again in (load(data), load(data, use_cache=False)):
        assert np.array_equal(np.asarray(again.images), images) and again.paths == paths
        assert again.skipped == skipped and np.array_equal(again.labels, labels)


def test_build_memory_is_bounded_by_the_chunk_not_the_set(tmp_path, monkeypatch):
    """Peak Python/numpy allocation while building a cache: a few chunks of pixels and per-item metadata.

    The metadata (Items, the zip's central directory while it is open, meta.json's text) measured 0.9-1 KB
    per image here (Python 3.11), against 3 KB of pixels per image; the bound allows 1.5 KB. Building in
    memory, as before (an array for every item, then a copy of the kept rows), adds at least 6 KB per image.
    """
    import tracemalloc

    import realfake.data.cache as cache_mod
    from realfake.data.sources import open_source

    colours = [png((i * 16, 255 - i * 16, i)) for i in range(16)]
    n, chunk = 1200, 30
    data = zip_with(tmp_path / "many.zip",
                    {f"{'REAL' if i % 2 else 'FAKE'}/{i:05d}.png": colours[i % 16] for i in range(n)})
    monkeypatch.setattr(cache_mod, "CHUNK", chunk)
    listed = open_source(data).items()  # pathlib interns every name: grow that table now, not in the count
    tracemalloc.start()
    try:
        ds = load(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(ds) == len(listed) == n
    assert ds.images[ds.paths.index("REAL/00017.png"), 0, 0].tolist() == [16, 239, 1]
    bound = n * 1536 + 4 * chunk * 32 * 32 * 3  # 1.5 KB of metadata per image, a few chunks of pixels
    assert peak < bound, f"peak {peak / 1e6:.2f} MB > {bound / 1e6:.2f} MB for a {n * 3072 / 1e6:.2f} MB set"


def test_decoding_keeps_a_bounded_window_of_chunks_in_flight(tmp_path, monkeypatch):
    """A slow consumer must not let decoded chunks pile up: at most IN_FLIGHT_PER_WORKER per worker ahead."""
    from concurrent.futures import ProcessPoolExecutor

    import realfake.data.cache as cache_mod
    from realfake.data.sources import open_source

    submitted = []

    class Counting(ProcessPoolExecutor):
        def submit(self, *a, **kw):
            submitted.append(a)
            return super().submit(*a, **kw)

    monkeypatch.setattr(cache_mod, "ProcessPoolExecutor", Counting)
    monkeypatch.setattr(cache_mod, "CHUNK", 1)
    source = open_source(add_bad(make_good(tmp_path / "data")))
    items = source.items()
    window = cache_mod.IN_FLIGHT_PER_WORKER * 2
    seen = []
    for k, (at, arr, errs) in enumerate(cache_mod._decoded_chunks(source, items, 2, False), start=1):
        assert len(submitted) <= k + window, (k, len(submitted))
        seen.append((at, arr, errs))
    assert len(submitted) == len(items) == 12
    assert [i for at, _, _ in seen for i in at] == list(range(12))  # in item order
    one = list(cache_mod._decoded_chunks(source, items, 1, False))
    assert all(np.array_equal(a[1], b[1]) and a[2] == b[2] for a, b in zip(seen, one, strict=True))


def test_unwritable_cache_warns_and_decodes_into_memory(tmp_path, monkeypatch, capsys):
    root = add_bad(make_good(tmp_path / "data"))
    want = load(root, use_cache=False)
    (tmp_path / "in-the-way").write_text("a file where the cache folder should be")
    monkeypatch.setenv("REALFAKE_CACHE_DIR", str(tmp_path / "in-the-way"))
    ds = load(root)
    err = capsys.readouterr().err
    assert "warning: could not write the data cache" in err and "into memory instead" in err
    assert "again" not in err  # nothing was decoded before the failure
    assert np.array_equal(ds.images, want.images) and ds.paths == want.paths and ds.skipped == want.skipped


def test_cache_filling_up_midway_decodes_again_into_memory(tmp_path, monkeypatch, capsys):
    import errno

    import realfake.data.cache as cache_mod

    root = add_bad(make_good(tmp_path / "data"))
    want = load(root, use_cache=False)
    real_append = cache_mod._NpyRows.append
    calls = []

    def append_until_full(self, rows):
        calls.append(len(rows))
        if len(calls) == 2:
            with self._io():
                raise OSError(errno.ENOSPC, "No space left on device")
        real_append(self, rows)

    monkeypatch.setattr(cache_mod, "CHUNK", 3)
    monkeypatch.setattr(cache_mod._NpyRows, "append", append_until_full)
    ds = load(root)
    err = capsys.readouterr().err
    assert "No space left on device" in err and "decoding again into memory" in err
    assert np.array_equal(ds.images, want.images) and ds.paths == want.paths and ds.skipped == want.skipped
    assert not ds.from_cache and list((cache_root() / "datasets").iterdir()) == []  # no entry, no temporary
    monkeypatch.setattr(cache_mod._NpyRows, "append", real_append)
    assert not load(root).from_cache and load(root).from_cache


def test_header_that_would_change_size_gets_the_rows_copied(tmp_path, monkeypatch):
    """Skipped files leave fewer rows than the header first said; where a new header would not fit in the
    old one's bytes, the rows are copied under it: the same file np.save writes."""
    import realfake.data.cache as cache_mod

    real_header = cache_mod._npy_header
    headers = []

    def roomy_first_header(n):
        h = real_header(n)
        headers.append(n)
        if len(headers) > 1:
            return h
        length = int.from_bytes(h[8:10], "little")
        return h[:8] + (length + 64).to_bytes(2, "little") + h[10:-1] + b" " * 64 + b"\n"

    monkeypatch.setattr(cache_mod, "_npy_header", roomy_first_header)
    root = add_bad(make_good(tmp_path / "data"))
    ds = load(root)
    assert headers == [12, 8]
    saved = io.BytesIO()
    np.save(saved, np.asarray(ds.images))
    entry = cache_root() / "datasets" / ds.key
    assert (entry / "images.npy").read_bytes() == saved.getvalue()
    assert sorted(p.name for p in entry.iterdir()) == ["images.npy", "labels.npy", "meta.json"]
    assert load(root).from_cache
