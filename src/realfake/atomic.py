"""Atomic writes: a reader (or a crash) sees the old file or the new one, never half of either.

A crash (kill -9, power loss) can still leave the temporary behind. Each temporary is named after its
writer (`.NAME.PID.RANDOM.tmp`) and locked (flock) by it for as long as it is being written; the kernel
drops the lock when the writer dies, however it dies. `remove_stale_temporaries` removes only temporaries
whose lock it can take, i.e. whose writer is gone: never one a live process (here or on another machine
sharing the folder) is still writing. Where flock does not exist (Windows) nothing is removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_TMP_NAME = re.compile(r"\.(?P<target>.+)\.\d+\.[a-z0-9_]+\.tmp")  # .NAME.PID.RANDOM.tmp


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _try_lock(fd: int) -> bool:
    """Take the writer's lock on `fd` without waiting; False if someone holds it."""
    if fcntl is None:  # pragma: no cover - Windows
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _locked_temporary(make: Callable[[], tuple[int | None, str]]) -> tuple[int, Path]:
    """Create a temporary with `make` and hold its lock: (lock fd, path).

    A sweeper may take the lock between creation and locking and remove the temporary; then the path
    no longer names the locked inode, and a new temporary is made.
    """
    while True:
        fd, tmp = make()
        try:
            if fd is None:
                fd = os.open(tmp, os.O_RDONLY)
            if _try_lock(fd) and os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return fd, Path(tmp)
        except FileNotFoundError:
            pass
        if fd is not None:
            os.close(fd)


def remove_stale_temporaries(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove the temporaries that crashed writers left in `folder` (those for target `name`, or all).

    Only names made by this module are considered, and only those whose writer's lock is free; errors are
    ignored (a sweep is housekeeping, it must never fail the run that does it). Returns what was removed.
    """
    if fcntl is None:  # pragma: no cover - without flock a live writer cannot be told from a dead one
        return []
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = _TMP_NAME.fullmatch(e.name)
        if m is None or (name is not None and m["target"] != name):
            continue
        try:
            fd = os.open(e.path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _try_lock(fd) and os.path.lexists(e.path):
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(e.path)
                removed.append(Path(e.path))
        finally:
            os.close(fd)
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    fd, tmp = _locked_temporary(lambda: tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp"))
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; reports and weights are meant to be shared
        with os.fdopen(fd, "wb") as f:  # closing it releases the lock, after the rename
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces `path` in one rename.

    A folder cannot be swapped by os.replace while the target is non-empty, so the old one is
    first renamed aside (`path.old`); readers that find only the aside copy use it (see `existing_dir`).
    The temporary is locked while it is filled, so that `remove_stale_temporaries` leaves it alone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    fd, tmp = _locked_temporary(lambda: (None, tempfile.mkdtemp(dir=path.parent, prefix=_tmp_prefix(path),
                                                                suffix=".tmp")))
    try:
        yield tmp
        old = path.with_name(path.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def existing_dir(path: str | Path) -> Path | None:
    """The folder written by `atomic_dir`, or its aside copy if a crash fell between the two renames."""
    path = Path(path)
    if path.is_dir():
        return path
    old = path.with_name(path.name + ".old")
    return old if old.is_dir() else None
