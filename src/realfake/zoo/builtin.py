"""Where generators come from: the zoo shipped inside the package (`assets/zoo/<family>.safetensors`, fp16, made
by `realfake zoo pack`), or a folder of trained ones, so `train --extra-fakes zoo` needs no download and
`--extra-fakes FOLDER` tells a folder of generators from a folder of images by looking.

`REALFAKE_ZOO_DIR` points the packaged lookup at another folder of packed generators (a build without the
weights, tests).
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from realfake.errors import RealfakeError
from realfake.zoo.weights import PACKED_SUFFIX, WEIGHTS_FILE, ZooInfo, read_info

ZOO_ENV = "REALFAKE_ZOO_DIR"
ZOO_WORDS = ("zoo", "builtin")  # what --extra-fakes accepts for the packaged zoo


@dataclass(frozen=True)
class ZooMember:
    """One generator of a zoo: its family, its weights file and what the file's header says."""

    family: str
    path: Path
    info: ZooInfo

    def sha256(self) -> str:
        """The weights file's digest: what a cache of its samples is keyed by (a retrained file samples anew)."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def packaged_dir() -> Path:
    """The packaged zoo's folder (`REALFAKE_ZOO_DIR` overrides it)."""
    env = os.environ.get(ZOO_ENV)
    if env:
        return Path(env).expanduser()
    return Path(str(resources.files("realfake") / "assets" / "zoo"))


def builtin_zoo(folder: str | Path | None = None) -> list[ZooMember]:
    """The packaged generators (or those in `folder`), by family; one clear line when there are none."""
    where = Path(folder).expanduser() if folder is not None else packaged_dir()
    members = generators_in(where) if where.is_dir() else []
    if not members:
        hint = (f"{ZOO_ENV} points at {where}" if folder is None and os.environ.get(ZOO_ENV)
                else "this installation of realfake ships without its zoo")
        raise RealfakeError(f"no packaged generator zoo: no <family>{PACKED_SUFFIX} in {where} ({hint}); train "
                            "generators with `realfake zoo train` and pass their folder instead")
    return members


def generators_in(path: str | Path) -> list[ZooMember]:
    """The generators a folder holds, sorted by family: itself a `zoo train` folder, packed `<family>.safetensors`
    files, or sub-folders that are `zoo train` folders. Empty when it holds none (a folder of images, say)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        return []
    if (p / WEIGHTS_FILE).is_file():
        files = [p / WEIGHTS_FILE]
    else:
        files = sorted(f for f in p.glob(f"*{PACKED_SUFFIX}") if f.is_file())
        files += sorted(d / WEIGHTS_FILE for d in p.iterdir() if d.is_dir() and (d / WEIGHTS_FILE).is_file())
    members: dict[str, ZooMember] = {}
    for f in files:
        info = read_info(f)
        if info.family in members:
            raise RealfakeError(f"{p} holds two generators of family {info.family!r} ({members[info.family].path} "
                                f"and {f}); keep one")
        members[info.family] = ZooMember(info.family, f.resolve(), info)
    return [members[k] for k in sorted(members)]


def is_zoo_word(value: str | Path) -> bool:
    return str(value).strip().lower() in ZOO_WORDS


def zoo_members(value: str | Path) -> tuple[list[ZooMember], str] | None:
    """What an --extra-fakes value names when it names generators: (members, where from), None for images."""
    if is_zoo_word(value):
        return builtin_zoo(), "the packaged generator zoo"
    members = generators_in(value)
    return (members, f"the generators in {Path(value).expanduser().resolve()}") if members else None
