"""Find labelled images in a folder or a zip, without extracting anything.

Layouts understood (folder names case-insensitive, at any depth):
- CIFAKE as Kaggle serves it: train/REAL, train/FAKE, test/REAL, test/FAKE (zip or extracted);
- any tree with REAL/ and FAKE/ folders; files may be nested below them, and the first folder
  below REAL/ or FAKE/ names the image's source (e.g. FAKE/sd14/...).
A file's label is its deepest REAL/FAKE ancestor; its split, a train/test folder above that.

Folders are walked by `realfake.data.walk` (the same walker as `predict`): it always finishes, and a link
out of the data folder is not followed but kept as an item that is refused, so it is listed as skipped.
Reads are capped and a damaged zip member is BadImage (see `realfake.data.images.read_capped`).
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import csv
import hashlib
import os
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Protocol

from realfake.contract import CLASS_NAMES
from realfake.data.images import read_file, read_member
from realfake.data.walk import walk_files
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
    refused: str | None = None  # why the file is not read (a link out of the data folder), else None


def parse_item(rel_path: str, refused: str | None = None) -> Item | None:
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
    return Item(rel_path, LABEL_FOLDERS[folders[label_at]], split, source, refused)


class Reader(Protocol):
    def __call__(self, rel_path: str) -> bytes: ...


@dataclass
class Source:
    """A folder, a zip, or a CSV list of labelled images. Cheap to create; lists files on first use."""

    root: Path
    display: str  # what to call it in messages and reports
    _items: list[Item] | None = field(default=None, repr=False)
    _stats: list[tuple[str, int, int]] | None = field(default=None, repr=False)

    @property
    def is_csv(self) -> bool:
        return self.root.suffix.lower() == ".csv" and self.root.is_file()

    @property
    def is_zip(self) -> bool:
        return self.root.is_file() and not self.is_csv

    def items(self) -> list[Item]:
        """Every labelled file, sorted by path so that order (and hence splits) never depends on the OS."""
        if self._items is None:
            if self.is_csv:
                found: Iterable[Item | None] = read_csv_items(self.root)
            elif self.is_zip:
                found = (parse_item(n) for n in self._zip_names())
            else:
                refused = self._walk()
                found = (parse_item(n, refused.get(n)) for n, _, _ in self._stats or [])
            self._items = sorted((it for it in found if it is not None), key=lambda it: it.path)
            if not self._items:
                raise RealfakeError(f"no images found in {self.display}: {CIFAKE_HINT}")
        return self._items

    def fingerprint(self) -> str:
        """Identity of the data: archive size+mtime for a zip, every file's size+mtime for a folder."""
        h = hashlib.sha256()
        if self.is_csv:  # the list itself, and every file it names
            st = self.root.stat()
            h.update(f"csv\0{self.root.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode())
            for it in self.items():
                try:
                    fst = (self.root.parent / it.path).stat()
                    h.update(f"\0{it.path}\0{fst.st_size}\0{fst.st_mtime_ns}".encode())
                except OSError:
                    h.update(f"\0{it.path}\0missing".encode())
        elif self.is_zip:
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
                yield lambda name: read_member(zf, name)
        else:
            root = self.root.parent if self.is_csv else self.root

            def read(rel_path: str) -> bytes:
                return read_file(root / rel_path)

            yield read

    def _zip_names(self) -> list[str]:
        try:
            with zipfile.ZipFile(self.root) as zf:
                return [i.filename for i in zf.infolist() if not i.is_dir()]
        except zipfile.BadZipFile:
            raise RealfakeError(f"{self.display} is not a valid zip file") from None

    def _walk(self) -> dict[str, str]:
        """List the folder into _stats (path, size, mtime) for the fingerprint; return the refused links."""
        stats: list[tuple[str, int, int]] = []
        refused: dict[str, str] = {}
        for f in walk_files(self.root, skip_hidden_dirs=True):
            try:
                st = os.lstat(f.path) if f.refused else os.stat(f.path)
            except OSError:
                continue
            stats.append((f.rel, st.st_size, st.st_mtime_ns))
            if f.refused:
                refused[f.rel] = f.refused
        stats.sort()
        self._stats = stats
        return refused


def read_csv_items(csv_path: Path) -> list[Item]:
    """Items from a CSV with columns path,label[,source][,split]; paths relative to the CSV's folder.

    Labels may be REAL/FAKE (any case) or 0/1. This is how a data set with sources that do not live in
    REAL/<source>/ folders (say, several generators' outputs side by side) is described.
    """
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            header = [h.strip().lower() for h in (rows[0].keys() if rows else [])]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RealfakeError(f"cannot read {csv_path}: {e}") from None
    if not {"path", "label"} <= set(header):
        raise RealfakeError(f"{csv_path} needs a header with at least the columns path,label (and optionally source)")
    labels = {**LABEL_FOLDERS, **{str(i): i for i in LABEL_FOLDERS.values()}}
    items = []
    for line, raw in enumerate(rows, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        label = labels.get(row["label"].lower())
        if label is None:
            raise RealfakeError(f"{csv_path}, line {line}: label must be REAL, FAKE, 0 or 1; got {row['label']!r}")
        split = row.get("split", "").lower() or None
        if split not in (None, *SPLIT_FOLDERS):
            raise RealfakeError(f"{csv_path}, line {line}: split must be train or test; got {row['split']!r}")
        items.append(Item(PurePosixPath(row["path"].replace("\\", "/")).as_posix(), label, split,
                          row.get("source") or None))
    return items


def bundled_sample() -> Path:
    """The 2,000-image demo sample shipped inside the package (provenance: docs/guide/data.md)."""
    return Path(str(resources.files("realfake") / "assets" / "demo-sample.zip"))


def open_source(data: str | Path | None) -> Source:
    """A Source for a user's --data value; None means the bundled sample."""
    if data is None:
        return Source(bundled_sample(), "the bundled demo sample")
    path = Path(data).expanduser()
    if not path.exists():
        raise RealfakeError(f"data not found: {path}")
    if path.is_file() and path.suffix.lower() != ".csv" and not zipfile.is_zipfile(path):
        raise RealfakeError(f"{path} is neither a folder, a zip nor a CSV file: {CIFAKE_HINT}")
    return Source(path, str(path))
