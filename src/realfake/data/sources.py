"""Find labelled images in a folder or a zip, without extracting anything.

Layouts understood (folder names case-insensitive, at any depth):
- CIFAKE as Kaggle serves it: train/REAL, train/FAKE, test/REAL, test/FAKE (zip or extracted);
- any tree with REAL/ and FAKE/ folders; files may be nested below them, and the first folder
  below REAL/ or FAKE/ names the image's source (e.g. FAKE/sd14/...).
A file's label is its deepest REAL/FAKE ancestor; its split, a train/test folder above that.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Protocol

from realfake.config import CLASS_NAMES
from realfake.errors import RealfakeError

LABEL_FOLDERS = {name.lower(): i for i, name in enumerate(CLASS_NAMES)}
SPLIT_FOLDERS = ("train", "test")
CIFAKE_HINT = (
    "expected CIFAKE's layout (train/REAL, train/FAKE, test/REAL, test/FAKE) or any folder with REAL/ and "
    "FAKE/ sub-folders"
)


@dataclass(frozen=True)
class Item:
    """One labelled file: where it is inside its source, and what the folders say about it."""

    path: str  # posix path relative to the source root (a zip member name for zips)
    label: int  # index into CLASS_NAMES
    split: str | None = None  # "train" / "test" when the layout says so
    source: str | None = None  # first sub-folder below REAL/ or FAKE/, if any


def parse_item(rel_path: str) -> Item | None:
    """Label, split and source from a relative path, or None for files outside REAL/FAKE folders."""
    parts = PurePosixPath(rel_path).parts
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    folders = [p.lower() for p in parts[:-1]]
    label_at = max((i for i, p in enumerate(folders) if p in LABEL_FOLDERS), default=None)
    if label_at is None:
        return None
    split = next((p for p in reversed(folders[:label_at]) if p in SPLIT_FOLDERS), None)
    source = parts[label_at + 1] if label_at + 1 < len(parts) - 1 else None
    return Item(rel_path, LABEL_FOLDERS[folders[label_at]], split, source)


class Reader(Protocol):
    def __call__(self, rel_path: str) -> bytes: ...


@dataclass
class Source:
    """A folder or a zip of labelled images. Cheap to create; lists files on first use."""

    root: Path
    display: str  # what to call it in messages and reports
    _items: list[Item] | None = field(default=None, repr=False)
    _stats: list[tuple[str, int, int]] | None = field(default=None, repr=False)

    @property
    def is_zip(self) -> bool:
        return self.root.is_file()

    def items(self) -> list[Item]:
        """Every labelled file, sorted by path so that order (and hence splits) never depends on the OS."""
        if self._items is None:
            names = self._zip_names() if self.is_zip else self._walk()
            found = (parse_item(n) for n in names)
            self._items = sorted((it for it in found if it is not None), key=lambda it: it.path)
            if not self._items:
                raise RealfakeError(f"no images found in {self.display}: {CIFAKE_HINT}")
        return self._items

    def fingerprint(self) -> str:
        """Identity of the data: archive size+mtime for a zip, every file's size+mtime for a folder."""
        h = hashlib.sha256()
        if self.is_zip:
            st = self.root.stat()
            h.update(f"zip\0{self.root.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        else:
            self.items()
            h.update(f"dir\0{self.root.resolve()}".encode())
            for rel, size, mtime in self._stats or []:
                h.update(f"\0{rel}\0{size}\0{mtime}".encode())
        return h.hexdigest()

    @contextmanager
    def open(self) -> Iterator[Reader]:
        """A function that returns a file's bytes; for a zip, one open archive serves every read."""
        if self.is_zip:
            with zipfile.ZipFile(self.root) as zf:
                yield zf.read
        else:
            root = self.root

            def read(rel_path: str) -> bytes:
                return (root / rel_path).read_bytes()

            yield read

    def _zip_names(self) -> list[str]:
        try:
            with zipfile.ZipFile(self.root) as zf:
                return [i.filename for i in zf.infolist() if not i.is_dir()]
        except zipfile.BadZipFile:
            raise RealfakeError(f"{self.display} is not a valid zip file") from None

    def _walk(self) -> list[str]:
        stats: list[tuple[str, int, int]] = []
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                full = os.path.join(dirpath, name)
                rel = Path(full).relative_to(self.root).as_posix()
                try:
                    st = os.stat(full)
                except OSError:
                    continue
                stats.append((rel, st.st_size, st.st_mtime_ns))
        stats.sort()
        self._stats = stats
        return [s[0] for s in stats]


def bundled_sample() -> Path:
    """The 2,000-image demo sample shipped inside the package (see README for provenance)."""
    return Path(str(resources.files("realfake") / "assets" / "demo-sample.zip"))


def open_source(data: str | Path | None) -> Source:
    """A Source for a user's --data value; None means the bundled sample."""
    if data is None:
        return Source(bundled_sample(), "the bundled demo sample")
    path = Path(data).expanduser()
    if not path.exists():
        raise RealfakeError(f"data not found: {path}")
    if path.is_file() and not zipfile.is_zipfile(path):
        raise RealfakeError(f"{path} is neither a folder nor a zip file: {CIFAKE_HINT}")
    return Source(path, str(path))
