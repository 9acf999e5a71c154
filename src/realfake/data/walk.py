"""Walk a folder of images: the one walker behind training, evaluation and prediction.

The rule for links, the same everywhere:
- a link whose target stays inside the folder that was named (compared by real path) is followed;
- a link whose target lies outside it is not: a linked folder is not entered and a linked file is not read;
  both are still reported (`Found.refused`), so they are listed as not examined instead of vanishing;
- every real folder is walked once: a link back to `..`, to an ancestor, or to a folder already walked
  is skipped, so a loop ends and no image is counted twice under two names (a duplicate in train and
  test would also leak the answer into the score).
Why refuse links out: a forensic data set is what the named folder holds. A link out of it (to `/`, to a
home folder, to another case's evidence) would silently pull unrelated files into a model or a verdict
list, and the folder's fingerprint would no longer describe what was read. Copy such files in instead.

Only regular files are yielded: a FIFO or device named like an image would block or never end.
Broken links are left out, as before. Folders are read in sorted order so results never depend on the OS.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import os
from dataclasses import dataclass

OUTSIDE = "not read: a link to a place outside the folder"


@dataclass(frozen=True)
class Found:
    """One file under the root, or one link out of it that was not followed."""

    rel: str  # posix path relative to the root, through link names as they appear in the folder
    path: str  # the path to open
    refused: str | None = None  # why it is not read (a link out of the folder), else None
    is_dir: bool = False  # True only for a refused link to a folder


def _inside(real: str, real_root: str) -> bool:
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def walk_files(root: str | os.PathLike[str], skip_hidden_dirs: bool = False) -> list[Found]:
    """Every regular file under `root` (and every link out of it, refused), sorted by relative path.

    Finishes on any tree: each real folder is listed at most once, whatever links point at it.
    `skip_hidden_dirs` leaves out folders whose names start with "." (.git, .cache, ...).
    """
    root = os.fspath(root)
    real_root = os.path.realpath(root)
    seen: set[str] = set()
    found: list[Found] = []
    stack: list[tuple[str, str]] = [("", root)]
    while stack:
        rel_dir, dir_path = stack.pop()
        real_dir = os.path.realpath(dir_path)
        if real_dir in seen:
            continue
        seen.add(real_dir)
        try:
            with os.scandir(dir_path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subdirs: list[tuple[str, str]] = []
        for e in entries:
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            try:
                is_dir, is_file = e.is_dir(), e.is_file()  # both follow links; both False for a broken one
                if e.is_symlink() and (is_dir or is_file) and not _inside(os.path.realpath(e.path), real_root):
                    found.append(Found(rel, e.path, OUTSIDE, is_dir))
                    continue
            except OSError:
                continue
            if is_dir:
                if not (skip_hidden_dirs and e.name.startswith(".")):
                    subdirs.append((rel, e.path))
            elif is_file:
                found.append(Found(rel, e.path))
        stack.extend(reversed(subdirs))  # popped in sorted order: the first name for a folder wins
    found.sort(key=lambda f: f.rel)
    return found

