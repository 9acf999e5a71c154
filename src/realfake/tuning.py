"""The one switch for realfake's process-wide tricks: off for library use, on for the `realfake` command.

Some of what makes training and prediction fast changes the whole process, not just realfake's own objects:
glibc's malloc settings (`device.keep_freed_memory`), handing freed heap back to the system
(`serve.decoding.release_memory`), the OpenMP threads' wait policy (an environment variable), and torch's
thread count (`device.ThreadGovernor` in training, the share of the cores each server worker or torchrun rank
takes). A program that only wants `Detector.load(...).predict(...)` should find its process as it left it, so
every such trick asks `enabled()` first and does nothing unless the caller opted in:

- the whole process, with `apply()` (the `realfake` command and its server call it as they start), or
- one call, with the `tuning=True` argument of `Detector.load`, `training.train`, `training.resume` and `fit`
  (`tuning=False` keeps a call off even after `apply()`). Prediction's one trick runs as the model loads, so
  `predict_batches` and the Detector's predict methods need no argument of their own.

`REALFAKE_TUNING=0` in the environment turns every trick off whatever the caller chose, for a user who wants
the command's process left alone too. `applied()` says which tricks actually ran in this process.

This module imports nothing heavy: `apply()` has to run before torch is imported for the wait policy to count.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

ENV = "REALFAKE_TUNING"
_OFF = ("0", "false", "no", "off")

# The names `applied()` reports, one per kind of trick.
MALLOC = "malloc settings"
MALLOC_TRIM = "malloc_trim"
WAIT_POLICY = "OMP_WAIT_POLICY"
THREAD_GOVERNOR = "thread governor"
THREADS = "torch threads"

_process_opted_in = False
_call_choice: ContextVar[bool | None] = ContextVar("realfake_tuning", default=None)  # per thread / task
_applied: list[str] = []
_lock = threading.Lock()


def vetoed() -> bool:
    """Whether the environment turns every trick off (REALFAKE_TUNING=0, false, no or off)."""
    return os.environ.get(ENV, "").strip().lower() in _OFF


def enabled() -> bool:
    """Whether a trick may change the process now: the current call's choice (`opted_in`), else the process's
    (`apply`), and never while the environment says no."""
    if vetoed():
        return False
    choice = _call_choice.get()
    return _process_opted_in if choice is None else choice


def apply(*, passive_wait: bool = False) -> tuple[str, ...]:
    """Opt this whole process in to every trick, from now on; returns `applied()`.

    The tricks themselves run where the work needs them (malloc settings when a model is first trained or
    loaded, for instance), so a command that never loads a model changes nothing. `passive_wait` also lets the
    OpenMP threads sleep, not spin, while they wait for work (`quiet_waiting_threads`): for prediction and
    serving, whose decoding and request handling need the cores that spinning threads hold; not for training.
    """
    global _process_opted_in
    _process_opted_in = True
    if passive_wait:
        quiet_waiting_threads()
    return applied()


@contextmanager
def opted_in(choice: bool | None) -> Iterator[None]:
    """For the length of the block, in this thread: tricks allowed (True), refused (False), or the process's
    choice (None, which changes nothing). What library entry points wrap around their work for `tuning=`."""
    if choice is None:
        yield
        return
    token = _call_choice.set(bool(choice))
    try:
        yield
    finally:
        _call_choice.reset(token)


def record(trick: str) -> None:
    """A trick says it changed the process (once per kind), for `applied()`."""
    with _lock:
        if trick not in _applied:
            _applied.append(trick)


def applied() -> tuple[str, ...]:
    """The tricks that have changed this process so far, in the order they first ran; () for a process that
    never opted in."""
    with _lock:
        return tuple(_applied)


def quiet_waiting_threads() -> bool:
    """Let the model's OpenMP threads sleep, not spin, while they wait for work (OMP_WAIT_POLICY=PASSIVE),
    where tricks are enabled and the user chose no policy; True if it set the variable.

    Why: the decoding workers need the very cores that spinning threads hold; with spinning threads prediction
    from files fell well behind the bare model (docs/performance.md#prediction-from-files).
    Training does not use it: its loop ran faster alone with spinning threads, and it shares a busy machine by thread
    count instead (realfake.device.ThreadGovernor, with the figures). libgomp reads the variable when torch is first
    imported, so it counts in this process only if set before then (`realfake predict` and `realfake serve` do, through
    `apply(passive_wait=True)` as they start); child processes started later (the server's workers) inherit it either
    way.
    """
    if not enabled() or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    record(WAIT_POLICY)
    return True
