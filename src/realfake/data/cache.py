"""Decode a source once into a memory-mapped uint8 array; later runs load it in milliseconds.

The cache key is the data's identity (see Source.fingerprint), the preprocessing settings and the
subset (--limit), so changing any of them builds a new entry and never serves stale pixels.
Entries are written atomically; what a crashed writer left behind is removed by the next load.
A build streams: decoded chunks go straight into the entry's file, so memory holds a few chunks and
the items' metadata, never the whole data set (data larger than memory can be cached and trained on).
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import contextlib
import errno
import hashlib
import io
import json
import multiprocessing as mp
import os
import sys
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from realfake.atomic import atomic_dir, existing_dir, remove_stale_temporaries
from realfake.contract import CLASS_NAMES, IMAGE_SIZE
from realfake.data.images import PREPROCESS_SETTINGS, BadImage, prepare_jpeg_decoding, read_and_decode
from realfake.data.sources import Item, Reader, Source, open_source
from realfake.errors import RealfakeError

CHUNK = 1000  # images per worker task: large enough to amortise opening the zip, small for a live bar
IN_FLIGHT_PER_WORKER = 2  # chunks submitted ahead per worker: one being decoded, one waiting its turn


@dataclass
class Dataset:
    """Decoded images with their labels and provenance; `images` may be a read-only memory map."""

    images: np.ndarray  # (N, 32, 32, 3) uint8
    labels: np.ndarray  # (N,) int64, index into CLASS_NAMES
    paths: list[str]
    splits: list[str | None]
    sources: list[str | None]
    source_name: str
    key: str
    skipped: list[dict[str, str]] = field(default_factory=list)
    from_cache: bool = False
    extra_start: int | None = None  # where extra fakes appended by realfake.data.extra begin; None: there are none
    extra_origin: dict[str, Any] | None = None  # the extra fakes' zoo, when they were sampled from generators

    def __len__(self) -> int:
        return len(self.labels)

    def report(self) -> dict[str, Any]:
        """What went in: counts per class and split, and every file left out with the reason."""
        per_class = Counter(CLASS_NAMES[int(i)] for i in self.labels)
        per_split = Counter(s or "unsplit" for s in self.splits)
        return {
            "data": self.source_name,
            "cache_key": self.key,
            "n_images": len(self),
            "per_class": {c: per_class.get(c, 0) for c in CLASS_NAMES},
            "per_split_folder": dict(sorted(per_split.items())),
            "sources": dict(sorted(Counter(s for s in self.sources if s).items())),
            "n_skipped": len(self.skipped),
            "skipped": self.skipped,
        }


def cache_root() -> Path:
    """REALFAKE_CACHE_DIR, else the user cache folder: never beside the data, which may be read-only."""
    env = os.environ.get("REALFAKE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "realfake"


def stratified_subset(items: list[Item], limit: int, seed: int) -> list[Item]:
    """`limit` items keeping each (split folder, class) group's share; the same for the same seed."""
    if limit >= len(items):
        return items
    groups: dict[tuple[str, int], list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault((it.split or "", it.label), []).append(i)
    keys = sorted(groups)
    exact = [limit * len(groups[k]) / len(items) for k in keys]
    take = [int(x) for x in exact]
    # Largest remainder: hand out what rounding down left over, biggest fractions first.
    for j in sorted(range(len(keys)), key=lambda j: exact[j] - take[j], reverse=True)[: limit - sum(take)]:
        take[j] += 1
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for k, n in zip(keys, take, strict=True):
        chosen.extend(rng.permutation(groups[k])[:n].tolist())
    return [items[i] for i in sorted(chosen)]


# Each worker process opens the source once (see _open_worker_source): opening a zip parses its whole
# central directory, which per chunk used to cost more than decoding it (docs/performance.md#memory).
_WORKER_SOURCE: dict[str, Any] = {}


def _open_worker_source(root: str) -> None:
    """Pool initializer: open `root` once for the life of this worker process (closed when it exits)."""
    stack = contextlib.ExitStack()
    _WORKER_SOURCE.update(root=root, stack=stack, read=stack.enter_context(Source(Path(root), root).open()))


def _decode_chunk(root: str, paths: list[str]) -> tuple[np.ndarray, list[str | None]]:
    """Worker: decode `paths` from the source at `root`; a failure becomes a reason, not an exception."""
    if _WORKER_SOURCE.get("root") == root:
        return _decode_with(_WORKER_SOURCE["read"], paths)
    with Source(Path(root), root).open() as read:
        return _decode_with(read, paths)


def _decode_with(read: Reader, paths: list[str]) -> tuple[np.ndarray, list[str | None]]:
    out = np.zeros((len(paths), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    errors: list[str | None] = []
    for i, p in enumerate(paths):
        try:
            out[i] = read_and_decode(p, read)
            errors.append(None)
        except BadImage as e:  # every reading or decoding failure: skipped and listed, never fatal
            errors.append(str(e))
    return out, errors


def _decoded_chunks(
    source: Source, items: list[Item], workers: int | None, progress: bool
) -> Iterator[tuple[list[int], np.ndarray, list[str | None]]]:
    """Decode `items` chunk by chunk, yielding (indices into items, images, errors) in item order.

    Items the walk refused (links out of the data folder) are not read and are in no chunk. In parallel,
    at most IN_FLIGHT_PER_WORKER chunks per worker are submitted ahead of the consumer: `pool.map` would
    submit every chunk at once and buffer every result, so a slow consumer (a disk write) let the whole
    data set pile up in memory.
    """
    todo = [i for i, it in enumerate(items) if it.refused is None]
    prepare_jpeg_decoding(len(todo))  # before the workers fork, so each does not set it up again
    starts = iter(range(0, len(todo), CHUNK))
    workers = min(workers or os.cpu_count() or 1, -(-len(todo) // CHUNK))
    bar = tqdm(total=len(todo), desc="decoding", unit="img", disable=not progress, file=sys.stderr)
    with contextlib.ExitStack() as stack:
        stack.callback(bar.close)
        if workers <= 1:
            read = stack.enter_context(source.open())  # one open source for every chunk
            for start in starts:
                at = todo[start : start + CHUNK]
                arr, errs = _decode_with(read, [items[i].path for i in at])
                bar.update(len(at))
                yield at, arr, errs
            return
        # fork is cheap and the workers never touch torch; elsewhere fall back to the platform default.
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        root = str(source.root)
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_open_worker_source,
                                   initargs=(root,))
        stack.callback(pool.shutdown, cancel_futures=True)
        window: deque[tuple[list[int], Future[tuple[np.ndarray, list[str | None]]]]] = deque()

        def submit_next() -> None:
            start = next(starts, None)
            if start is not None:
                at = todo[start : start + CHUNK]
                window.append((at, pool.submit(_decode_chunk, root, [items[i].path for i in at])))

        for _ in range(IN_FLIGHT_PER_WORKER * workers):
            submit_next()
        while window:
            at, future = window.popleft()
            arr, errs = future.result()
            submit_next()  # before handing the chunk over, so the workers stay busy while it is consumed
            bar.update(len(at))
            yield at, arr, errs


def decode_items(
    source: Source, items: list[Item], workers: int | None = None, progress: bool = True
) -> tuple[np.ndarray, list[str | None]]:
    """Decode every item into one in-memory array (zeros where an item failed), with each item's error.

    For small picks (calibration images, a benchmark's pool); `load_dataset` streams into its cache instead.
    Items the walk refused (links out of the data folder) are not read: their reason is their error.
    """
    images = np.zeros((len(items), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    errors: list[str | None] = [it.refused for it in items]
    with contextlib.closing(_decoded_chunks(source, items, workers, progress)) as chunks:
        for at, arr, errs in chunks:
            images[at] = arr
            for i, e in zip(at, errs, strict=True):
                errors[i] = e
    return images, errors


def load_dataset(
    data: str | Path | None,
    limit: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    use_cache: bool = True,
) -> Dataset:
    """The decoded data set for a --data value, from the cache when it is there, else built and cached.

    A build streams the decoded images into the cache entry's file, so memory holds a few chunks and the
    items' paths and labels, never the images of the whole set. With `use_cache=False` (small one-off sets:
    calibration data, tests) nothing is written: the images are decoded into memory, as they are when the
    cache folder cannot be written (a warning says so).
    """
    source = open_source(data)
    key_fields = {
        "fingerprint": source.fingerprint(),
        "preprocess": PREPROCESS_SETTINGS,
        "limit": limit,
        "limit_seed": seed if limit else None,
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:24]
    entry = cache_root() / "datasets" / key
    if use_cache:
        remove_stale_temporaries(entry.parent)  # what runs killed mid-write left (never a live writer's)
    if use_cache and (found := existing_dir(entry)) is not None:
        try:
            return _read_entry(found, key)
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            pass  # a damaged entry is rebuilt below
    items = source.items()
    if limit:
        items = stratified_subset(items, limit, seed)
    if use_cache:
        built = _build_entry(entry, key, source, items, workers, progress)
        if built is not None:
            return built
    return _build(_MemoryRows(len(items)), key, source, items, workers, progress)


class _CacheUnwritable(Exception):
    """Writing the cache entry failed; the OSError is the cause. Not an OSError, so never the source's."""


def _build_entry(
    entry: Path, key: str, source: Source, items: list[Item], workers: int | None, progress: bool
) -> Dataset | None:
    """Decode into a new cache entry and return it memory-mapped; None (after a warning) if it cannot be written.

    A full or read-only cache costs speed next time, never this run: the caller then decodes into memory
    (again, when the failure came midway, e.g. a disk that filled up).
    """
    phase = "open"
    try:
        with atomic_dir(entry) as tmp:
            phase = "build"  # an OSError now is the source's (reading the data), not the cache's
            ds = _build(_NpyRows(tmp / "images.npy", len(items)), key, source, items, workers, progress)
            phase = "commit"
        found = existing_dir(entry)
        if found is None:
            raise FileNotFoundError(errno.ENOENT, "entry gone after writing it", str(entry))
        ds.images = np.load(found / "images.npy", mmap_mode="r")
        return ds
    except _CacheUnwritable as e:
        why = e.__cause__
    except OSError as e:
        if phase == "build":
            raise
        why = e
    n = len(items) * IMAGE_SIZE * IMAGE_SIZE * 3
    again = " again" if phase != "open" else ""
    print(f"warning: could not write the data cache at {entry}: {why}; decoding{again} into memory instead "
          f"({n / 1e6:,.0f} MB; set REALFAKE_CACHE_DIR to a writable folder with room)", file=sys.stderr)
    return None


def _build(
    rows: _MemoryRows | _NpyRows, key: str, source: Source, items: list[Item], workers: int | None,
    progress: bool
) -> Dataset:
    """Decode `items` into `rows`, kept images only and in item order; list every skipped file with why.

    With `_NpyRows` the labels and metadata are written beside the images (the cache entry's files).
    """
    errors: list[str | None] = [it.refused for it in items]
    with contextlib.closing(_decoded_chunks(source, items, workers, progress)) as chunks:
        for at, arr, errs in chunks:
            good = [j for j, e in enumerate(errs) if e is None]
            rows.append(arr if len(good) == len(errs) else arr[good])
            for i, e in zip(at, errs, strict=True):
                errors[i] = e
    kept = [it for it, e in zip(items, errors, strict=True) if e is None]
    skipped = [{"path": it.path, "reason": e} for it, e in zip(items, errors, strict=True) if e is not None]
    if not kept:
        first = f"; first: {skipped[0]['path']}: {skipped[0]['reason']}" if skipped else ""
        raise RealfakeError(f"no usable images in {source.display} ({len(skipped)} unreadable{first})")
    ds = Dataset(
        images=rows.finish(),
        labels=np.array([it.label for it in kept], dtype=np.int64),
        paths=[it.path for it in kept],
        splits=[it.split for it in kept],
        sources=[it.source for it in kept],
        source_name=source.display,
        key=key,
        skipped=skipped,
    )
    if isinstance(rows, _NpyRows):
        rows.write_beside(ds)
    return ds


_ROW_BYTES = IMAGE_SIZE * IMAGE_SIZE * 3


class _MemoryRows:
    """Kept images in one in-memory array: allocated once for every item, cut down in place at the end."""

    def __init__(self, capacity: int) -> None:
        self.array = np.empty((capacity, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        self.n = 0

    def append(self, rows: np.ndarray) -> None:
        self.array[self.n : self.n + len(rows)] = rows
        self.n += len(rows)

    def finish(self) -> np.ndarray:
        if self.n < len(self.array):
            self.array.resize((self.n, IMAGE_SIZE, IMAGE_SIZE, 3), refcheck=False)  # realloc: no second copy
        return self.array


class _NpyRows:
    """Kept images appended to an .npy file as they are decoded: memory holds one chunk, never the set.

    Plain sequential writes, not a writable memory map: every page written through a shared map stays in the
    writer's resident set until the kernel wants the memory back, so a map would show (and, under pressure,
    cost) the whole file as the builder's RSS (`benchmarks/cache_rss.py`, docs/performance.md#memory). The header is
    written for every item; if some were skipped, `finish` rewrites it for the rows kept and cuts the file (numpy pads
    headers so that the length of the first axis never changes their size; where it would, the rows are copied, chunk by
    chunk, under a header of their own). Every OSError becomes _CacheUnwritable.
    """

    def __init__(self, path: Path, capacity: int) -> None:
        self.path, self.n = path, 0
        with self._io():
            self.file = open(path, "wb")  # noqa: SIM115 - closed by finish (or with the entry's folder)
            self.file.write(_npy_header(capacity))
            self.offset = self.file.tell()

    @contextlib.contextmanager
    def _io(self) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            with contextlib.suppress(OSError, AttributeError):
                self.file.close()
            raise _CacheUnwritable(str(e)) from e

    def append(self, rows: np.ndarray) -> None:
        with self._io():
            self.file.write(np.ascontiguousarray(rows).tobytes())
        self.n += len(rows)

    def finish(self) -> np.ndarray:
        """Close the file with a header for the rows written; returns an empty placeholder, see _build_entry."""
        with self._io():
            header = _npy_header(self.n)
            if len(header) == self.offset:
                self.file.seek(0)
                self.file.write(header)
                self.file.truncate(self.offset + self.n * _ROW_BYTES)
                self.file.close()
            else:
                self.file.close()
                _copy_rows(self.path, self.offset, self.n, header)
        return np.empty((0, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)

    def write_beside(self, ds: Dataset) -> None:
        with self._io():
            np.save(self.path.parent / "labels.npy", ds.labels)
            meta = {
                "paths": ds.paths,
                "splits": ds.splits,
                "sources": ds.sources,
                "source_name": ds.source_name,
                "skipped": ds.skipped,
            }
            (self.path.parent / "meta.json").write_text(json.dumps(meta))


def _npy_header(n: int) -> bytes:
    """The .npy header (format 1.0, as np.save writes it) of n images."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (n, IMAGE_SIZE, IMAGE_SIZE, 3)})
    return buf.getvalue()


def _copy_rows(path: Path, offset: int, n: int, header: bytes) -> None:
    """Rewrite `path` as `header` + its first n rows after `offset`, CHUNK rows at a time."""
    part = path.with_name(path.name + ".part")
    with open(path, "rb") as src, open(part, "wb") as dst:
        dst.write(header)
        src.seek(offset)
        for start in range(0, n, CHUNK):
            dst.write(src.read(min(CHUNK, n - start) * _ROW_BYTES))
    os.replace(part, path)


def _read_entry(entry: Path, key: str) -> Dataset:
    meta = json.loads((entry / "meta.json").read_text())
    images = np.load(entry / "images.npy", mmap_mode="r")
    labels = np.load(entry / "labels.npy")
    if len(images) != len(labels) or len(labels) != len(meta["paths"]):
        raise ValueError("inconsistent cache entry")
    return Dataset(
        images=images,
        labels=labels,
        paths=meta["paths"],
        splits=meta["splits"],
        sources=meta["sources"],
        source_name=meta["source_name"],
        key=key,
        skipped=meta["skipped"],
        from_cache=True,
    )


def check_two_classes(ds: Dataset) -> None:
    """Training needs both classes; say which one is missing rather than fail deep in the metrics."""
    present = set(np.unique(ds.labels).tolist())
    if len(present) < 2:
        missing = [CLASS_NAMES[i] for i in range(len(CLASS_NAMES)) if i not in present]
        raise RealfakeError(
            f"{ds.source_name} has only one class: no {', '.join(missing)} images could be read"
        )
