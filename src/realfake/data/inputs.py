"""What a user points `predict` at: files, folders (recursive), globs and zips, as a flat list of inputs.

Each input is named the way the user will recognise it (`photos.zip::a/b.jpg` for a zip member) and
read lazily, so a folder of ten thousand images never sits in memory at once.

Folders (and `**` patterns) are walked by `realfake.data.walk`, with the same rule for links as training:
links out of the named folder are not followed but listed as not read, and loops end. Reads are capped
(`realfake.data.images.read_capped`); a damaged zip member is BadImage, listed like any unreadable file.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import fnmatch
import functools
import glob
import os
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from realfake.data.images import BadImage, read_file, read_member
from realfake.data.walk import walk_files

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
ZIP_SEPARATOR = "::"


@dataclass(frozen=True)
class InputRef:
    """One image to read: a file, or a member of a zip archive."""

    path: str  # the file, or the zip archive
    member: str | None = None  # the member inside the zip
    refused: str | None = None  # why it is not read (a link out of the folder walked), else None

    @property
    def name(self) -> str:
        return self.path if self.member is None else f"{self.path}{ZIP_SEPARATOR}{self.member}"


def _is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    # os.path.splitext, not Path(...).suffix: the same answer for a name not starting with ".", at a tenth of
    # the cost (it was most of listing a folder of 20,000 images)
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_SUFFIXES and "__MACOSX" not in name


def _zip_members(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return sorted(i.filename for i in zf.infolist() if not i.is_dir() and _is_image_name(i.filename))


def _zip_refs(path: Path) -> Iterator[InputRef]:
    for m in _zip_members(path):
        yield InputRef(str(path), m)


def _is_zip(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() == ".zip" and zipfile.is_zipfile(p)


def _folder_refs(folder: Path) -> Iterator[InputRef]:
    """Image files under `folder`, and the links out of it that were refused (so the user sees them)."""
    for f in walk_files(folder):
        if _is_image_name(f.rel) or (f.refused and f.is_dir and not f.rel.rsplit("/", 1)[-1].startswith(".")):
            yield InputRef(f.path, refused=f.refused)


def _wild_match(names: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """glob's rules for path components: `**` is any number of folders, wildcards skip hidden names."""

    def one(name: str, pat: str) -> bool:
        return fnmatch.fnmatchcase(name, pat) and not (name.startswith(".") and glob.has_magic(pat)
                                                      and not pat.startswith("."))

    @functools.cache
    def match(i: int, j: int) -> bool:
        if j == len(pattern):
            return i == len(names)
        if pattern[j] == "**":
            return any(match(k, j + 1) for k in range(i, len(names) + 1)
                       if not any(n.startswith(".") for n in names[i:k]))
        return i < len(names) and one(names[i], pattern[j]) and match(i + 1, j + 1)

    return match(0, 0)


def _recursive_glob(pattern: str) -> Iterator[InputRef]:
    """A `**` pattern, matched against one safe walk of its fixed leading folder instead of glob's own
    recursion, which follows every link (two links to `..` made it run for hours)."""
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base = os.path.join(*parts[:fixed]) if fixed else ""
    wild = parts[fixed:]
    for f in walk_files(base or "."):
        names = tuple(f.rel.split("/"))
        path = Path(os.path.join(base, f.rel) if base else f.rel)
        if _wild_match(names, wild):  # the file itself: taken whatever its name, the user asked for it
            if f.refused is None and _is_zip(path):
                yield from _zip_refs(path)
            else:
                yield InputRef(str(path), refused=f.refused)
        elif any(_wild_match(names[:k], wild) and _is_image_name("/".join(names[k:])) for k in range(len(names))):
            yield InputRef(str(path), refused=f.refused)  # inside a matched folder: its images


def expand_inputs(args: Iterable[str | Path]) -> Iterator[InputRef]:
    """Files as given (whatever their name: the user asked for them); folders walked for image files in
    sorted order; zips opened for their image members; a pattern that names no file is expanded as a glob.
    A name that matches nothing is still yielded, so that reading it reports the error in the output."""
    for arg in args:
        p = Path(arg).expanduser()
        if p.is_dir():
            yield from _folder_refs(p)
        elif _is_zip(p):
            yield from _zip_refs(p)
        elif not p.exists() and glob.has_magic(str(arg)):
            if "**" in p.parts:
                refs = list(_recursive_glob(str(p)))
                yield from refs or [InputRef(str(arg))]
                continue
            matches = sorted(glob.glob(str(p)))  # no `**`: one listing per folder level, it cannot loop
            if not matches:
                yield InputRef(str(arg))
            yield from expand_inputs(m for m in matches)
        else:
            yield InputRef(str(p))


class InputReader:
    """Reads InputRefs, keeping zip archives open between reads (one per archive)."""

    def __init__(self) -> None:
        self._zips: dict[str, zipfile.ZipFile] = {}

    def read(self, ref: InputRef) -> bytes:
        """The input's bytes, capped; BadImage for a refused link, a damaged archive or member, a huge file."""
        if ref.refused:
            raise BadImage(ref.refused)
        if ref.member is None:
            return read_file(ref.path)
        zf = self._zips.get(ref.path)
        if zf is None:
            try:
                zf = self._zips[ref.path] = zipfile.ZipFile(ref.path)
            except zipfile.BadZipFile as e:
                raise BadImage(f"damaged archive ({e})") from None
        return read_member(zf, ref.member)

    def close(self) -> None:
        for zf in self._zips.values():
            zf.close()
        self._zips.clear()

    def __enter__(self) -> InputReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
