"""A `realfake predict` killed mid-run (SIGKILL, SIGTERM) leaves no decoding worker and no `--out` temporary that
blocks the next write: the workers die with it, never hold the temporary's lock, and SIGTERM runs the cleanup.

The processes are real: the command runs in a child process of its own session on tens of thousands of small
JPEGs (the mini stand-in zip, named many times), and is killed once its workers exist and its first rows are in
the temporary. Processes are found by reading /proc, so these tests are for Linux.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from realfake.atomic import remove_stale_temporaries

pytestmark = [pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds processes through /proc"),
              pytest.mark.slow]  # children started and killed, and waited on

WORKERS = 2
COPIES = 24  # of the 2,500-image mini zip: a minute or more of work on 2 cores, killed after a few seconds
START_S = 240  # torch's import and the model's load on a busy 2-core machine, then the first batch
GONE_S = 10  # the workers are gone this soon after their parent


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process, or None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def _children(pid: int) -> dict[int, int]:
    """The live children of `pid`: {pid: start time} (a start time tells a process from a later one of its pid)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None and st[1] == pid and st[0] not in "ZX":
            found[int(entry.name)] = st[2]
    return found


def _alive(pid: int, started: int) -> bool:
    st = _stat(pid)
    return st is not None and st[2] == started and st[0] not in "ZX"  # a zombie has ended; only its entry is left


def _wait_for(check: Callable[[], object], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"after {seconds} s: {what}")
        time.sleep(0.05)


def _temporaries(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.*.tmp"))


def _open_files(pid: int) -> set[Path]:
    files = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            files.add(Path(os.readlink(fd)))
    return files


@contextlib.contextmanager
def _running(argv: list[str], log: Path, ready: Callable[[dict[int, int]], bool]) -> Iterator[
        tuple[subprocess.Popen[bytes], dict[int, int]]]:
    """Start `python ARGV` in a session of its own and wait (START_S at most) until `ready(its live children)`;
    yields the process and those children. Whatever is left of the session is killed at the end."""
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, *argv], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
    try:
        children: dict[int, int] = {}

        def started() -> bool:
            nonlocal children
            if proc.poll() is not None:
                pytest.fail(f"exited {proc.returncode} before it was killed:\n{log.read_text()[-3000:]}")
            children = _children(proc.pid)
            return ready(children)

        _wait_for(started, START_S, f"not ready; its stderr:\n{log.read_text()[-3000:]}")
        yield proc, children
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the workers too, reparented or not: they keep the session
        proc.wait(timeout=30)


@contextlib.contextmanager
def _predicting(run: Path, data: Path, out: Path, log: Path) -> Iterator[
        tuple[subprocess.Popen[bytes], dict[int, int], Path]]:
    """`realfake predict RUN DATA... --decode-workers 2 --out OUT`, once its workers run and its first rows are written:
    (the process, its workers, the temporary being written)."""
    argv = ["-m", "realfake", "predict", str(run), *[str(data)] * COPIES, "--decode-workers", str(WORKERS),
            "--device", "cpu", "--out", str(out)]

    def writing(children: dict[int, int]) -> bool:
        return len(children) == WORKERS and any(t.stat().st_size > 0 for t in _temporaries(out))

    with _running(argv, log, writing) as (proc, workers):
        [tmp] = _temporaries(out)
        yield proc, workers, tmp


def _assert_gone(workers: dict[int, int]) -> None:
    _wait_for(lambda: not any(_alive(p, s) for p, s in workers.items()), GONE_S,
              f"decoding workers still running: {[p for p, s in workers.items() if _alive(p, s)]}")


def test_sigkill_leaves_no_worker_and_a_temporary_the_next_write_removes(trained_run, mini_zip, tmp_path):
    out = tmp_path / "out" / "rows.jsonl"
    with _predicting(trained_run, mini_zip, out, tmp_path / "stderr.txt") as (proc, workers, tmp):
        for pid in workers:  # only the parent holds the temporary (and its lock)
            assert tmp not in _open_files(pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        _assert_gone(workers)
        # the parent could not remove its temporary, but its lock is free: the next write sweeps it
        assert remove_stale_temporaries(out.parent) == [tmp]
        assert list(out.parent.iterdir()) == []


def test_sigterm_stops_the_workers_and_removes_the_temporary(trained_run, mini_zip, tmp_path):
    out = tmp_path / "out" / "rows.jsonl"
    with _predicting(trained_run, mini_zip, out, tmp_path / "stderr.txt") as (proc, workers, _):
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM  # ended through its cleanup, not by the signal
        _assert_gone(workers)
        assert list(out.parent.iterdir()) == []  # no temporary, and no half rows.jsonl


# The watchdog alone (no Linux parent-death signal): a parent that forks a decoding pool, then sleeps.
POOL_PARENT = """
import time
import realfake.predict as p

p._kill_me_with_parent = lambda: None  # as where prctl does not exist: only the watchdog thread is left
pool = p.decoding_pool(2)
for f in [pool.submit(time.sleep, 0.1) for _ in range(4)]:
    f.result()
time.sleep(600)
"""


def _watched(children: dict[int, int]) -> bool:
    """Two workers, each past its start: its watchdog thread beside its main one."""
    return len(children) == 2 and all(len(list(Path(f"/proc/{pid}/task").iterdir())) >= 2 for pid in children)


def test_workers_watchdog_ends_them_without_the_parent_death_signal(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(POOL_PARENT)
    with _running([str(script)], tmp_path / "stderr.txt", _watched) as (proc, workers):
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        _assert_gone(workers)
