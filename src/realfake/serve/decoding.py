"""Where the server decodes an upload: small ones in the request's own worker thread, heavy ones on one thread.

A 160 KB PNG can decode to 150 MB and take seconds of CPU. Decoded in the request's worker thread, as small
uploads are, eight of them at once took both cores of a 2-core machine and pushed the p99 of small requests
from 0.5 s to 2.2 s (`benchmarks/serve_load.py`); each also left its 150 MB in the freed but unreturned memory
of its thread's malloc arena, so the server's RSS grew from 0.6 to 3.8 GB and stayed there. So an upload whose
header says it decodes to more than HEAVY_DECODE_BYTES goes to `HeavyDecoder`: one server-wide thread, so heavy
decodes run one at a time (the others queue; their requests wait, which is the price of sending them), at a
lower scheduling priority on Linux, so the cores go to small requests first; after each heavy decode the
freed memory is handed back to the system (`release_memory`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import TypeVar

R = TypeVar("R")

# Decoded bytes (width x height x bands x bytes per sample, from the header) above which an upload is heavy:
# about 2,300 x 2,300 RGB, tens of milliseconds to decode; every image a client of the API usually sends is
# far below it, and is decoded at once in its own request's thread.
HEAVY_DECODE_BYTES = 16 * 2**20
# Added to the heavy-decode thread's nice value (Linux: 0 -> 10): when small requests want the cores, the
# scheduler gives that thread about a tenth of the share of a normal one; on an idle machine it runs at full
# speed. Pillow releases the GIL while it inflates, unfilters and resamples, so the thread rarely holds it.
HEAVY_DECODE_NICE = 10


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
    (self-raising) mmap threshold stay mapped: after a 150 MB decode the RSS does not come down by itself.
    Safe to call anywhere, any time; a no-op (False) where there is no malloc_trim.
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


class HeavyDecoder:
    """One thread for decode-heavy uploads, shared by every request of a server: `run(fn, *args)` runs
    `fn(*args)` there, after any heavy decodes queued before it, and returns its result (blocking the caller,
    a request's worker thread). The thread starts on first use, with its priority lowered
    (`lower_thread_priority`); after each call it releases the memory the call freed (`release_memory`)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="realfake-heavy-decode",
                                        initializer=lower_thread_priority)
        self.calls = 0  # heavy decodes run: what a test or an operator reads

    def run(self, fn: Callable[..., R], *args: object) -> R:
        return self._pool.submit(self._call, fn, *args).result()

    def _call(self, fn: Callable[..., R], *args: object) -> R:
        try:
            return fn(*args)
        finally:
            self.calls += 1
            release_memory()

    def close(self) -> None:
        """Finish the queued decodes, then stop the thread (a server's shutdown)."""
        self._pool.shutdown(wait=True)
