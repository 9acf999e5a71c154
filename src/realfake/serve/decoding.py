"""Where the server decodes an upload: small ones in the request's own worker thread, heavy ones on one thread.

A small PNG can decode to hundreds of megabytes and take seconds of CPU. Decoded in the request's worker thread,
as small uploads are, a few of them at once took every core from small requests, and each left its decoded size
in its thread's malloc arena, so the server's RSS grew and stayed grown (docs/guide/serving.md). So an upload whose
header says it decodes to more than HEAVY_DECODE_BYTES goes to `HeavyDecoder`: one server-wide thread, so heavy
decodes run one at a time (the others queue; their requests wait, which is the price of sending them), at a
lower scheduling priority on Linux, so the cores go to small requests first; after each heavy decode the
freed memory is handed back to the system (`release_memory`).

The queue in front of that thread is bounded (`max_waiting`, `realfake serve --heavy-queue`): a caller waits in
a request's worker thread, and there are only 40 of those (anyio's default), so a flood of small 16-bit PNGs
once took every one of them and stalled small requests for seconds (docs/guide/serving.md).
Over the bound an upload is refused at once (`HeavyQueueFull`; the server answers 503 with Retry-After), so
heavy uploads never hold more than 1 + max_waiting of those threads. The wait stays in the worker thread,
bounded, rather than moving to the event loop: whether an upload is heavy is known only from its header, which
is read in that thread anyway (Pillow may inflate text chunks while it reads one: not for the event loop), and
every request keeps its one thread hop.
"""

from __future__ import annotations

__side__ = "predicting"  # see tests/test_layers.py

import contextlib
import ctypes
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from math import ceil
from typing import TypeVar

from realfake import tuning

R = TypeVar("R")

# Decoded bytes (width x height x bands x bytes per sample, from the header) above which an upload is heavy:
# about 2,300 x 2,300 RGB, tens of milliseconds to decode; every image a client of the API usually sends is
# far below it, and is decoded at once in its own request's thread.
HEAVY_DECODE_BYTES = 16 * 2**20
# Added to the heavy-decode thread's nice value (Linux: 0 -> 10): when small requests want the cores, the
# scheduler gives that thread about a tenth of the share of a normal one; on an idle machine it runs at full
# speed. Pillow releases the GIL while it inflates, unfilters and resamples, so the thread rarely holds it.
HEAVY_DECODE_NICE = 10
# Heavy uploads that may wait for the heavy-decode thread while one is decoded. Each waits in one of the 40
# request threads, so this many still leaves 31 for everyone else, and bounds a heavy upload's wait to seconds
# (docs/performance.md#serving). A request decodes its
# uploads one at a time, so it takes one place at a time, however many heavy files it holds.
DEFAULT_HEAVY_QUEUE = 8
# The most `max_waiting` may be: half of anyio's 40 request threads, so heavy uploads can never again take
# enough of them to stall the rest.
MAX_HEAVY_QUEUE = 20


def lower_thread_priority(increment: int = HEAVY_DECODE_NICE) -> bool:
    """Lower the calling thread's CPU priority by `increment` nice levels; True if it was lowered.

    Linux only: there nice is per thread, and `threading.get_native_id()` names this thread alone. Elsewhere
    (macOS, BSD) PRIO_PROCESS with that id would name a process, or the whole server, so nothing is done.
    """
    if sys.platform != "linux":
        return False
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + increment)
        return True
    return False


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, looked up once; None where the C library has none (musl, macOS, Windows)."""
    if sys.platform != "linux":
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def release_memory() -> bool:
    """Hand freed heap memory back to the system (glibc `malloc_trim(0)`, all arenas); True if any was.

    glibc keeps what a thread freed in that thread's arena for reuse, and large freed blocks below its
    (self-raising) mmap threshold stay mapped: after a large decode the RSS does not come down by itself.
    Safe to call anywhere, any time; a no-op (False) where there is no malloc_trim, or where the process did not
    opt in to process-wide tricks (realfake.tuning: `realfake serve` does).
    """
    trim = _malloc_trim() if tuning.enabled() else None
    if trim is None:
        return False
    tuning.record(tuning.MALLOC_TRIM)
    return bool(trim(0))


class HeavyQueueFull(Exception):
    """The heavy-decode queue is at its bound: refused now, rather than waiting in a request's worker thread."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"decoding other large images; send it again in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class HeavyDecoder:
    """One thread for decode-heavy uploads, shared by every request of a server: `run(fn, *args)` runs
    `fn(*args)` there, after any heavy decodes queued before it, and returns its result (blocking the caller,
    a request's worker thread). At most 1 + `max_waiting` calls are admitted at once (one running, the rest
    queued); one more raises `HeavyQueueFull` at once. The thread starts on first use, with its priority
    lowered (`lower_thread_priority`); after each call it releases the memory the call freed
    (`release_memory`)."""

    def __init__(self, max_waiting: int = DEFAULT_HEAVY_QUEUE) -> None:
        if not 0 <= max_waiting <= MAX_HEAVY_QUEUE:
            raise ValueError(f"max_waiting must be 0..{MAX_HEAVY_QUEUE}; got {max_waiting}")
        self.max_waiting = max_waiting
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="realfake-heavy-decode",
                                        initializer=lower_thread_priority)
        self._lock = threading.Lock()
        self._admitted = 0  # running or queued
        self._mean_s = 1.0  # seconds per heavy decode (a running mean), for Retry-After; a guess until measured
        self.calls = 0  # heavy decodes run, and uploads refused: what a test or an operator reads
        self.refused = 0

    @property
    def admitted(self) -> int:
        """Calls running or queued now."""
        return self._admitted

    def retry_after_s(self) -> int:
        """Whole seconds until the queue has likely drained (what is admitted now, at the mean decode time),
        1..60: a hint for a refused client that spreads its retry past the uploads already admitted."""
        with self._lock:
            return max(1, min(60, ceil(self._mean_s * max(1, self._admitted))))

    def run(self, fn: Callable[..., R], *args: object) -> R:
        with self._lock:
            full = self._admitted > self.max_waiting
            if full:
                self.refused += 1
            else:
                self._admitted += 1
        if full:
            raise HeavyQueueFull(self.retry_after_s())
        try:
            future = self._pool.submit(self._call, fn, *args)
        except BaseException:  # shut down: the place was never used
            with self._lock:
                self._admitted -= 1
            raise
        return future.result()

    def _call(self, fn: Callable[..., R], *args: object) -> R:
        start = time.monotonic()
        try:
            return fn(*args)
        finally:
            self.calls += 1
            release_memory()
            with self._lock:  # the place is free once the memory is back: the next call may start now
                self._mean_s = 0.7 * self._mean_s + 0.3 * (time.monotonic() - start)
                self._admitted -= 1

    def close(self) -> None:
        """Finish the queued decodes, then stop the thread (a server's shutdown)."""
        self._pool.shutdown(wait=True)
