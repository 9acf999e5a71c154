"""Micro-batching: concurrent requests share one forward pass instead of queueing for one each.

On a CPU one forward pass of 64 images costs far less than 64 passes of one (docs/performance.md#serving), so
under load, running together the requests that
arrive within a few milliseconds raises throughput, at the price of that wait for a lone request.
`benchmarks/serve_load.py` measures it through the server.

A request's items always stay together and in order; a batch is closed when `max_items` would be passed or
`wait_s` has gone by since its first request. The model's answer for an image does not depend on the other
images in its batch, except for float rounding: oneDNN picks its kernels by batch size, so a logit can move by
~2e-7 between a batch of 1 and a batch of 64 (`Detector.predict` on a list shows the same).
"""

from __future__ import annotations

__side__ = "predicting"  # see tests/test_layers.py

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Job(Generic[T, R]):
    items: list[T]
    future: Future[list[R]] = field(default_factory=Future)


class MicroBatcher(Generic[T, R]):
    """Run `run(items) -> results` (one result per item, in order) on batches gathered from many threads.

    `submit` blocks its calling thread (a web server's worker thread) until its items' results are back; the
    one batcher thread, started on first use, is the only caller of `run`, so model calls never overlap.
    """

    def __init__(self, run: Callable[[list[T]], list[R]], max_items: int = 64, wait_s: float = 0.005) -> None:
        if max_items < 1 or wait_s < 0:
            raise ValueError("max_items must be at least 1 and wait_s at least 0")
        self._run = run
        self.max_items = max_items
        self.wait_s = wait_s
        self._queue: queue.Queue[_Job[T, R] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.batches = 0  # forward passes run, and the items they held: what a test or a benchmark reads
        self.items = 0

    def submit(self, items: Sequence[T]) -> list[R]:
        """The results for `items`, computed in a batch with whatever else arrives meanwhile (blocking)."""
        if not items:
            return []
        job: _Job[T, R] = _Job(list(items))
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="realfake-batcher", daemon=True)
                self._thread.start()
            self._queue.put(job)
        return job.future.result()

    def close(self) -> None:
        """Finish the queued work, then stop the thread (a server's shutdown)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._queue.put(None)
        if thread is not None:
            thread.join()

    def _loop(self) -> None:
        carry: _Job[T, R] | None = None
        while True:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is None:
                return
            batch, n = [first], len(first.items)
            deadline = time.monotonic() + self.wait_s
            stop = False
            while n < self.max_items:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                if n + len(job.items) > self.max_items:
                    carry = job  # it opens the next batch: a request is never split
                    break
                batch.append(job)
                n += len(job.items)
            self._run_batch(batch)
            if stop:
                self._queue.put(None)  # run the rest (and the carried job) first, then stop

    def _run_batch(self, batch: list[_Job[T, R]]) -> None:
        flat = [item for job in batch for item in job.items]
        try:
            results = self._run(flat)
            if len(results) != len(flat):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(flat)} items")
        except BaseException as e:  # noqa: BLE001 - every waiting request must hear of the failure
            for job in batch:
                job.future.set_exception(e)
            return
        self.batches += 1
        self.items += len(flat)
        start = 0
        for job in batch:
            job.future.set_result(results[start : start + len(job.items)])
            start += len(job.items)
