"""Decode a source once into a memory-mapped uint8 array; later runs load it in milliseconds.

The cache key is the data's identity (see Source.fingerprint), the preprocessing settings and the
subset (--limit), so changing any of them builds a new entry and never serves stale pixels.
Entries are written atomically; what a crashed writer left behind is removed by the next load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from realfake.atomic import atomic_dir, existing_dir, remove_stale_temporaries
from realfake.contract import CLASS_NAMES, IMAGE_SIZE
from realfake.data.images import PREPROCESS_SETTINGS, BadImage, read_and_decode
from realfake.data.sources import Item, Reader, Source, open_source
from realfake.errors import RealfakeError

CHUNK = 1000  # images per worker task: large enough to amortise opening the zip, small for a live bar


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
# central directory (120k entries for CIFAKE, ~0.5 s), which per chunk used to cost more than decoding it.
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


def decode_items(
    source: Source, items: list[Item], workers: int | None = None, progress: bool = True
) -> tuple[np.ndarray, list[str | None]]:
    """Decode every item, in parallel processes when there is enough work to pay for them.

    Items the walk refused (links out of the data folder) are not read: their reason is their error.
    """
    todo = [i for i, it in enumerate(items) if it.refused is None]
    paths = [items[i].path for i in todo]
    chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
    workers = min(workers or os.cpu_count() or 1, len(chunks))
    images = np.zeros((len(items), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    errors: list[str | None] = [it.refused for it in items]
    bar = tqdm(total=len(paths), desc="decoding", unit="img", disable=not progress, file=sys.stderr)
    stack = contextlib.ExitStack()
    if workers <= 1:
        read = stack.enter_context(source.open())  # one open source for every chunk
        results = (_decode_with(read, c) for c in chunks)
        pool = None
    else:
        # fork is cheap and the workers never touch torch; elsewhere fall back to the platform default.
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_open_worker_source, initargs=(str(source.root),)
        )
        results = pool.map(_decode_chunk, [str(source.root)] * len(chunks), chunks)
    try:
        start = 0
        for arr, errs in results:
            at = todo[start : start + len(errs)]
            if len(todo) == len(items):  # nothing refused (the usual case): a plain slice, no gather
                images[start : start + len(errs)] = arr
            else:
                images[at] = arr
            for i, e in zip(at, errs, strict=True):
                errors[i] = e
            start += len(errs)
            bar.update(len(errs))
    finally:
        bar.close()
        stack.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return images, errors


def load_dataset(
    data: str | Path | None,
    limit: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    use_cache: bool = True,
) -> Dataset:
    """The decoded data set for a --data value, from the cache when it is there, else built and cached."""
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
    images, errors = decode_items(source, items, workers, progress)
    ok = np.array([e is None for e in errors], dtype=bool)
    kept = [it for it, good in zip(items, ok, strict=True) if good]
    skipped = [{"path": it.path, "reason": e} for it, e in zip(items, errors, strict=True) if e is not None]
    if not kept:
        first = f"; first: {skipped[0]['path']}: {skipped[0]['reason']}" if skipped else ""
        raise RealfakeError(f"no usable images in {source.display} ({len(skipped)} unreadable{first})")
    ds = Dataset(
        images=images[ok],
        labels=np.array([it.label for it in kept], dtype=np.int64),
        paths=[it.path for it in kept],
        splits=[it.split for it in kept],
        sources=[it.source for it in kept],
        source_name=source.display,
        key=key,
        skipped=skipped,
    )
    if use_cache:
        _write_entry(entry, ds)
    return ds


def _write_entry(entry: Path, ds: Dataset) -> None:
    try:
        with atomic_dir(entry) as tmp:
            np.save(tmp / "images.npy", ds.images)
            np.save(tmp / "labels.npy", ds.labels)
            meta = {
                "paths": ds.paths,
                "splits": ds.splits,
                "sources": ds.sources,
                "source_name": ds.source_name,
                "skipped": ds.skipped,
            }
            (tmp / "meta.json").write_text(json.dumps(meta))
    except OSError as e:  # a full or read-only cache costs speed next time, never this run
        print(f"warning: could not write the data cache at {entry}: {e}", file=sys.stderr)


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
