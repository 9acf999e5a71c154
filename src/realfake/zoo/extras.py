"""A zoo's generators as a folder of extra fakes (`train --extra-fakes zoo`): `n` images per family, sampled on the
CPU from the run's seed, JPEG q75 as `realfake zoo sample` writes them, cached under the user cache folder so a
second run (or a resume, or an evaluation that rebuilds the run's data) samples nothing.

Samples are drawn in chunks of CHUNK images, chunk c of a family from its own seed (run seed, family, c), so the
first n images are the same whatever n is asked: a larger run extends the cache instead of redrawing it. The
pool of a family is keyed by its weights file's digest and the seed; the folder handed to training
(`FAKE/<family>/NNNNNN.jpg` with the sample marker) is made of hard links into the pools (copies where links
fail). Every chunk and every view is written beside its place and renamed in (`realfake.atomic.atomic_dir`).

Diffusion samples cost a network pass per denoising step (100 for the zoo's ddpm: about 1 image/s on two CPU
cores, against hundreds a second for the one-pass GANs and the VAE), so no family samples more than
MAX_PASSES network passes per image slot: the ddpm takes at most 256 images and the other families make up
the difference, so the share of extra fakes stays as asked. The cap is recorded with the run.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from realfake.atomic import atomic_dir, existing_dir
from realfake.errors import RealfakeError
from realfake.zoo.builtin import ZooMember

CHUNK = 64
MAX_PASSES = 25_600  # network passes per family: 256 ddpm images of 100 steps, any one-pass family is not capped
POOL_DIR = "zoo-samples"
VIEW_DIR = "zoo-extras"
Log = Callable[[str], None]


@dataclass(frozen=True)
class ZooExtras:
    """A folder of sampled extra fakes and what made it (recorded in run.json's `extra_fakes.zoo`)."""

    folder: Path
    provenance: dict[str, Any]


def passes_per_image(member: ZooMember) -> int:
    return int(member.info.settings.get("timesteps", 1)) if member.info.family == "ddpm" else 1


def per_family_counts(members: list[ZooMember], n_total: int) -> dict[str, int]:
    """`n_total` images split evenly over the families; a capped family's shortfall goes to the others."""
    caps = {m.family: max(CHUNK, MAX_PASSES // passes_per_image(m)) for m in members}
    counts: dict[str, int] = {}
    left, open_ = n_total, sorted(caps, key=lambda f: caps[f])
    while open_:
        share = math.ceil(left / len(open_)) if left > 0 else 0
        fam = open_.pop(0)  # the most capped first, so what it cannot take is spread over the rest
        counts[fam] = min(share, caps[fam])
        left -= counts[fam]
    return dict(sorted(counts.items()))


def _chunk_seed(seed: int, family: str, chunk: int) -> int:
    digest = hashlib.sha256(f"realfake-zoo-extras:{seed}:{family}:{chunk}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _pool(member: ZooMember, digest: str, seed: int, n: int, root: Path, log: Log) -> list[Path]:
    """The first n cached JPEGs of this generator and seed, sampling the chunks that are missing."""
    from realfake.zoo.sample import jpeg_bytes, sample_images
    from realfake.zoo.weights import load_generator

    folder = root / POOL_DIR / f"{member.family}-{digest[:16]}-seed{seed}"
    chunks = math.ceil(n / CHUNK)
    missing = [c for c in range(chunks) if existing_dir(folder / f"chunk-{c:05d}") is None]
    if missing:
        log(f"zoo: sampling {len(missing) * CHUNK:,} images of {member.family} into the cache {folder}")
        net, info = load_generator(member.path)
        for c in missing:
            images = sample_images(net, info, CHUNK, seed=_chunk_seed(seed, member.family, c))
            with atomic_dir(folder / f"chunk-{c:05d}") as tmp:
                for i, img in enumerate(images):
                    (tmp / f"{i:03d}.jpg").write_bytes(jpeg_bytes(img))
    return [folder / f"chunk-{i // CHUNK:05d}" / f"{i % CHUNK:03d}.jpg" for i in range(n)]


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (no second copy of the bytes), or a copy where the file system has none."""
    try:
        os.link(src, dst)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(src, dst)


def zoo_extras(members: list[ZooMember], where: str, n_total: int, seed: int, root: Path | None = None,
               log: Log = lambda m: None) -> ZooExtras:
    """`n_total` extra fakes from `members` (see the module docstring), as a cached FAKE/<family>/ folder."""
    from realfake.data.cache import cache_root
    from realfake.zoo.sample import JPEG_QUALITY, MARKER, _marker

    if n_total < 1:
        raise RealfakeError("internal: the zoo must sample at least one image")
    root = root or cache_root()
    counts = per_family_counts(members, n_total)
    digests = {m.family: m.sha256() for m in members}
    key = hashlib.sha256(json.dumps({"counts": counts, "digests": digests, "seed": seed, "chunk": CHUNK},
                                    sort_keys=True).encode()).hexdigest()[:24]
    view = root / VIEW_DIR / key
    if existing_dir(view) is None:
        used = [m for m in members if counts[m.family] > 0]
        pools = {m.family: _pool(m, digests[m.family], seed, counts[m.family], root, log) for m in used}
        with atomic_dir(view) as tmp:
            marker: str | None = None
            for m in used:
                target = tmp / "FAKE" / m.family
                target.mkdir(parents=True)
                for i, src in enumerate(pools[m.family]):
                    link_or_copy(src, target / f"{i:06d}.jpg")
                entry = {"n": counts[m.family], "seed": seed, "chunk": CHUNK, "weights": m.info.metadata()}
                marker = _marker(json.loads(marker) if marker else None, m.family, entry)
            (tmp / MARKER).write_text(marker or "")
    caps = {m.family: max(CHUNK, MAX_PASSES // passes_per_image(m)) for m in members}
    provenance = {
        "from": where,
        "seed": seed,
        "jpeg_quality": JPEG_QUALITY,
        "sampled_per_family": counts,
        "capped": sorted(f for f, n in counts.items() if n >= caps[f] and n < math.ceil(n_total / len(members))),
        "generators": {m.family: {"path": str(m.path), "sha256": digests[m.family], "steps": m.info.steps,
                                  "seed": m.info.seed, "realfake_version": m.info.realfake_version}
                       for m in members},
        "folder": str(view),
    }
    return ZooExtras(view, provenance)
