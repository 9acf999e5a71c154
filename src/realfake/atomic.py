"""Atomic writes: a reader (or a crash) sees the old file or the new one, never half of either.

A crash (kill -9, power loss) can still leave the temporary behind. Each temporary is named after its
writer (`.NAME.PID.RANDOM.tmp`) and locked (flock) by it for as long as it is being written; the kernel
drops the lock when the writer dies, however it dies. `remove_stale_temporaries` removes only temporaries
whose lock it can take, i.e. whose writer is gone: never one a live process (here or on another machine
sharing the folder) is still writing. Where flock does not exist (Windows) nothing is removed.

A folder is replaced by two renames (`atomic_dir`): the old folder goes aside under a name unique to that
call (`.NAME.PID.RANDOM.old`), then the new one takes its place. Nothing else is ever renamed or removed: a
user's own `NAME.old` (a copy of a run, another tool's folder) is never touched.

A write that fails (disk full, quota, no permission, read-only file system, a file in the way) removes its
temporary and raises `WriteError`: one line naming the file, the system's reason and what to do, instead of
an OSError traceback, so every command that writes through here fails the same readable way.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import contextlib
import errno
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from realfake.errors import RealfakeError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

_TMP_NAME = re.compile(r"\.(?P<target>.+)\.\d+\.[a-z0-9_]+\.tmp")  # .NAME.PID.RANDOM.tmp
_ASIDE_NAME = re.compile(r"\.(?P<target>.+)\.\d+\.[a-z0-9_]+\.old")  # .NAME.PID.RANDOM.old (atomic_dir)


_NO_SPACE = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NO_PERMISSION = {errno.EACCES, errno.EPERM}


class WriteError(RealfakeError):
    """A file could not be written; its temporary is gone and the file is as it was before (old or absent).

    The message says what to fix (from the errno) and then the next step, which the caller knows better than
    the writer (`then`): "run the command again" by default, "continue with: realfake train --resume RUN"
    where a run can go on from its checkpoint.
    """

    def __init__(self, path: str | Path, error: OSError, then: str = "run the command again") -> None:
        self.path, self.error, self.next_step = Path(path), error, then
        super().__init__(f"could not write {self.path} ({_reason(error, self.path)}): {_fix(error, self.path)}, "
                         f"then {then}")

    def then(self, step: str) -> WriteError:
        """The same error with another next step."""
        return WriteError(self.path, self.error, step)


def _reason(e: OSError, path: Path) -> str:
    """The system's words, and the path it was about when that is not the file itself or our temporary."""
    why = e.strerror or e.__class__.__name__
    where = e.filename
    if where is not None and Path(where) != path and not _TMP_NAME.fullmatch(Path(where).name):
        why += f": {where}"
    return why


def _fix(e: OSError, path: Path) -> str:
    named = e.filename is not None and not _TMP_NAME.fullmatch(Path(e.filename).name)
    where = _nearest_existing(Path(e.filename) if named else path.parent)  # mkdir names the folder it could not make
    if e.errno in _NO_SPACE:
        return f"free disk space on the drive of {where}"
    if e.errno in _NO_PERMISSION:
        return f"make {where} writable, or choose another place"
    if e.errno == errno.EROFS:
        return f"{where} is on a read-only file system: choose another place"
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"a file is in the way at {where}: move it, or choose another place"
    if e.errno == errno.EISDIR:
        return f"a folder is in the way at {path}: move it, or choose another file name"
    return f"check {where} (space, permissions)"


def _nearest_existing(p: Path) -> Path:
    while not _exists(p) and p != p.parent:
        p = p.parent
    return p


def _exists(p: Path) -> bool:
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def check_writable(path: str | Path) -> None:
    """Fail now, with WriteError, if `path` could not be created: a file in the way of its folder, or a folder
    that is read-only. For commands that would otherwise find out only after minutes of work.

    A best effort (os.access does not know every rule): the writes themselves still fail in one line.
    """
    path = Path(path)
    folder = _nearest_existing(path.parent)
    try:
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
        if not os.access(folder, os.W_OK | os.X_OK):
            code = errno.EROFS if _read_only_fs(folder) else errno.EACCES
            raise PermissionError(code, os.strerror(code), str(folder))
    except OSError as e:
        raise WriteError(path, e) from None


def _read_only_fs(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # pragma: no cover - no statvfs (Windows)
        return False


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

    Only names made by this module are considered: temporaries whose writer's lock is free, and aside copies
    (`atomic_dir`) whose replacement is in place; an aside whose target is missing is the only copy a crash
    between the two renames left, and is kept (`existing_dir` reads it). Errors are ignored (a sweep is
    housekeeping, it must never fail the run that does it). Returns what was removed.
    """
    if fcntl is None:  # pragma: no cover - without flock a live writer cannot be told from a dead one
        return []
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        aside = _ASIDE_NAME.fullmatch(e.name)
        m = aside or _TMP_NAME.fullmatch(e.name)
        if m is None or (name is not None and m["target"] != name):
            continue
        if aside is not None:
            if os.path.lexists(os.path.join(folder, m["target"])):
                _remove(e)
                removed.append(Path(e.path))
            continue
        try:
            fd = os.open(e.path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _try_lock(fd) and os.path.lexists(e.path):
                _remove(e)
                removed.append(Path(e.path))
        finally:
            os.close(fd)
    return removed


def _remove(e: os.DirEntry[str]) -> None:
    if e.is_dir(follow_symlinks=False):
        shutil.rmtree(e.path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(e.path)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never half of it.

    Raises WriteError (one line, temporary removed) when the disk, the folder or the file system refuses.
    """
    with atomic_file(path) as f:
        f.write(data)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file to stream into; on success it replaces `path` in one rename, on any failure (an error
    in the caller's block included) it is removed and `path` is as it was. For outputs too big to hold in
    memory first, such as a prediction run's rows.

    Raises WriteError (one line, temporary removed) when the disk, the folder or the file system refuses.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent, path.name)
        fd, tmp = _locked_temporary(
            lambda: tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp")
        )
    except OSError as e:
        raise WriteError(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:  # closing it releases the lock, after the rename
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; reports and weights are meant to be shared
            yield f  # an OSError in here is a failed write (f.write raises it) and reported as one
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WriteError(path, e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces `path` in one rename.

    A folder cannot be swapped by os.replace while the target is non-empty, so the old one is first renamed
    aside, under a name unique to this call (`.NAME.PID.RANDOM.old`), and removed once the new one is in
    place; readers that find only the aside copy (a crash between the two renames) use it (`existing_dir`).
    No other name is touched, so a user's own `NAME.old` is safe. The temporary is locked while it is filled,
    so that `remove_stale_temporaries` leaves it alone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    fd, tmp = _locked_temporary(lambda: (None, tempfile.mkdtemp(dir=path.parent, prefix=_tmp_prefix(path),
                                                                suffix=".tmp")))
    try:
        yield tmp
        aside = None
        if os.path.lexists(path):
            aside = path.with_name(f"{_tmp_prefix(path)}{secrets.token_hex(6)}.old")
            os.replace(path, aside)  # a fresh random name: nothing there to replace
        os.replace(tmp, path)
        if aside is not None:
            if aside.is_dir() and not aside.is_symlink():
                shutil.rmtree(aside, ignore_errors=True)
            else:
                aside.unlink(missing_ok=True)
        remove_stale_temporaries(path.parent, path.name)  # asides an earlier crash left, now that `path` is back
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
    try:
        asides = [e for e in os.scandir(path.parent) if (m := _ASIDE_NAME.fullmatch(e.name))
                  and m["target"] == path.name and e.is_dir(follow_symlinks=False)]
    except OSError:
        return None
    return Path(max(asides, key=lambda e: e.stat(follow_symlinks=False).st_mtime_ns).path) if asides else None


def existing_dirs(folder: str | Path) -> dict[str, Path]:
    """Every visible folder in `folder` by name, with the aside copy standing in for one a crash left missing."""
    try:
        entries = [e for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return {}
    names = {e.name for e in entries if not e.name.startswith(".")}
    names |= {m["target"] for e in entries if (m := _ASIDE_NAME.fullmatch(e.name))}
    return {n: found for n in sorted(names) if (found := existing_dir(Path(folder) / n)) is not None}
