"""Where the training images live while a run trains: on the device, or streamed from the memory-mapped cache.

`device` (airbench's way, the default whenever it fits): the training set is one uint8 tensor on the training
device, and a batch is one gather there; nothing waits on the disk. `stream`: the images stay in the cache's
memory map (the page cache holds what fits) and each batch is gathered on the host by a background thread a
few batches ahead, then moved to the device, so a set larger than RAM or GPU memory trains at the disk's pace
with memory bounded by the prefetch depth. `auto` picks `device` when the data fits the memory budget (half of
what is free on the device, or `data_budget_mb`) and says which it chose.

With several training processes (torchrun), `device` holds only this rank's share of each epoch: its rows of
every batch, gathered onto the device once at the epoch's start.

All three hand out exactly the same batches for the same seed; only where the bytes come from differs.
"""

from __future__ import annotations

__side__ = "training"  # see tests/test_layers.py

import collections
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from realfake.contract import IMAGE_SIZE
from realfake.errors import RealfakeError

PLACEMENTS = ("auto", "device", "stream")
BYTES_PER_IMAGE = IMAGE_SIZE * IMAGE_SIZE * 3
PREFETCH = 4  # batches a streaming placement gathers ahead: enough to hide a page-cache miss, little memory


def _to_device(host_rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """(n, H, W, 3) uint8 host images -> (n, 3, H, W) uint8 on `device` (a channels_last view)."""
    t = torch.from_numpy(np.ascontiguousarray(host_rows))
    t = t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)
    return t.permute(0, 3, 1, 2)


class Resident:
    """The whole training set as one uint8 tensor on the device (one process, `device`)."""

    name = "device"

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images
        self._next: Iterator[torch.Tensor] = iter(())

    def start_epoch(self, local_batches: list[torch.Tensor]) -> None:
        self._next = iter(local_batches)

    def next_batch(self) -> torch.Tensor:
        return self.take(next(self._next))

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        return self.images[rows.to(self.images.device)]

    def end_epoch(self) -> None:
        self._next = iter(())

    def close(self) -> None:
        pass


def as_placement(images: torch.Tensor) -> Resident:
    return Resident(images)


class Streamed:
    """Batches gathered from the host array (the cache's memory map) by a background thread, PREFETCH ahead."""

    name = "stream"

    def __init__(self, host: np.ndarray, rows: np.ndarray, device: torch.device, prefetch: int = PREFETCH) -> None:
        self.host, self.rows, self.device, self.prefetch = host, np.asarray(rows), device, max(1, prefetch)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="realfake-prefetch")
        self._queue: collections.deque[Future[torch.Tensor]] = collections.deque()
        self._todo: Iterator[torch.Tensor] = iter(())

    def _load(self, rows: torch.Tensor) -> torch.Tensor:
        idx = self.rows[rows.numpy()]
        order = np.argsort(idx, kind="stable")  # read the memory map front to back, then restore the order
        gathered = np.empty((len(idx), *self.host.shape[1:]), dtype=np.uint8)
        gathered[order] = self.host[idx[order]]
        return _to_device(gathered, self.device)

    def _fill(self) -> None:
        while len(self._queue) < self.prefetch:
            rows = next(self._todo, None)
            if rows is None:
                return
            self._queue.append(self._pool.submit(self._load, rows))

    def start_epoch(self, local_batches: list[torch.Tensor]) -> None:
        self.end_epoch()
        self._todo = iter(local_batches)
        self._fill()

    def next_batch(self) -> torch.Tensor:
        if not self._queue:
            raise RuntimeError("next_batch() after the epoch's last batch")
        fut = self._queue.popleft()
        self._fill()
        return fut.result()

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        return self._load(rows)

    def end_epoch(self) -> None:
        for fut in self._queue:
            fut.cancel()
        self._queue.clear()
        self._todo = iter(())

    def close(self) -> None:
        self.end_epoch()
        self._pool.shutdown(wait=True)


class Shard:
    """Several processes, `device`: this rank's rows of every batch of the epoch, gathered onto the device at the
    epoch's start (N / world images per rank, not N). A row another rank holds (a source image of the artefact
    simulation) is read from the host."""

    name = "device"

    def __init__(self, host: np.ndarray, rows: np.ndarray, device: torch.device) -> None:
        self.host, self.rows, self.device = host, np.asarray(rows), device
        self.images: torch.Tensor | None = None
        self.where = torch.full((len(self.rows),), -1, dtype=torch.int64)
        self._bounds: Iterator[tuple[int, int]] = iter(())

    def start_epoch(self, local_batches: list[torch.Tensor]) -> None:
        self.end_epoch()
        mine = torch.cat(local_batches) if local_batches else torch.zeros(0, dtype=torch.int64)
        self.images = None  # the last epoch's shard goes before this one's arrives
        self.images = _to_device(self.host[self.rows[mine.numpy()]], self.device)
        self.where[mine] = torch.arange(len(mine))
        ends = np.cumsum([len(b) for b in local_batches]).tolist()
        self._bounds = iter(zip([0, *ends[:-1]], ends, strict=True))

    def next_batch(self) -> torch.Tensor:
        assert self.images is not None
        a, b = next(self._bounds)
        return self.images[a:b]

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        at = self.where[rows]
        if self.images is not None and bool((at >= 0).all()):
            return self.images[at.to(self.images.device)]
        return _to_device(self.host[self.rows[rows.numpy()]], self.device)

    def end_epoch(self) -> None:
        self.where.fill_(-1)
        self._bounds = iter(())

    def close(self) -> None:
        self.images = None


@dataclass(frozen=True)
class Choice:
    placement: str
    reason: str


def free_memory(device: torch.device) -> int | None:
    """Bytes free for the data on `device`: the GPU's free memory, or the host's available RAM (Linux's
    MemAvailable, which counts reclaimable page cache); None when it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def choose(requested: str, n_images: int, device: torch.device, budget_mb: float | None = None) -> Choice:
    """`device` or `stream` for `n_images` held on this rank; `auto` holds them when they fit the budget."""
    if requested not in PLACEMENTS:
        raise RealfakeError(f"--data-placement must be one of {', '.join(PLACEMENTS)}; got {requested!r}")
    need = n_images * BYTES_PER_IMAGE
    if requested != "auto":
        return Choice(requested, "asked for")
    if budget_mb is not None:
        budget, what = int(budget_mb * 2**20), f"data_budget_mb {budget_mb:g}"
    else:
        free = free_memory(device)
        if free is None:
            return Choice("device", "auto: free memory unknown")
        budget, what = free // 2, f"half of the {free / 2**30:.1f} GiB free on {device.type}"
    mib = need / 2**20
    if need <= budget:
        return Choice("device", f"auto: {mib:,.0f} MiB of images fit {what}")
    return Choice("stream", f"auto: {mib:,.0f} MiB of images exceed {what}")


def place(
    choice: str, host: np.ndarray, rows: np.ndarray, device: torch.device, rank: int = 0, size: int = 1
) -> Resident | Streamed | Shard:
    """The training set's placement (`rows`: the training split's rows of `host`)."""
    if choice == "stream":
        return Streamed(host, rows, device)
    if size > 1:
        return Shard(host, rows, device)
    return Resident(_to_device(host[rows], device))
