"""What a user points `predict` at: files, folders (recursive), globs and zips, as a flat list of inputs.

Each input is named the way the user will recognise it (`photos.zip::a/b.jpg` for a zip member) and
read lazily, so a folder of ten thousand images never sits in memory at once.

Reads are capped (`realfake.data.images.read_capped`); a damaged zip member is BadImage, listed like any
unreadable file.
"""

from __future__ import annotations

import glob
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from realfake.data.images import BadImage, read_file, read_member

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
ZIP_SEPARATOR = "::"


@dataclass(frozen=True)
class InputRef:
    """One image to read: a file, or a member of a zip archive."""

    path: str  # the file, or the zip archive
    member: str | None = None  # the member inside the zip

    @property
    def name(self) -> str:
        return self.path if self.member is None else f"{self.path}{ZIP_SEPARATOR}{self.member}"


def _is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and Path(base).suffix.lower() in IMAGE_SUFFIXES and "__MACOSX" not in name


def _zip_members(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return sorted(i.filename for i in zf.infolist() if not i.is_dir() and _is_image_name(i.filename))


def expand_inputs(args: Iterable[str | Path]) -> Iterator[InputRef]:
    """Files as given (whatever their name: the user asked for them); folders walked for image files in
    sorted order; zips opened for their image members; a pattern that names no file is expanded as a glob.
    A name that matches nothing is still yielded, so that reading it reports the error in the output."""
    for arg in args:
        p = Path(arg).expanduser()
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and _is_image_name(f.relative_to(p).as_posix()):
                    yield InputRef(str(f))
        elif p.is_file() and p.suffix.lower() == ".zip" and zipfile.is_zipfile(p):
            for m in _zip_members(p):
                yield InputRef(str(p), m)
        elif not p.exists() and any(c in str(arg) for c in "*?["):
            matches = sorted(glob.glob(str(p), recursive=True))
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
        """The input's bytes, capped; BadImage for a damaged archive or member, or a huge file."""
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
