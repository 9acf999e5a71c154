"""Train/val/test indices: the seed notebook's stratified 70/20/10, CIFAKE's own test folder, or one source
held out (`holdout:SOURCE`: every image of SOURCE goes to the test split and none to training or validation,
the rest is split 70/20/10; this is how a detector is judged on a generator it never saw).

Indices come from NumPy's PCG64 generator over a path-sorted data set, so the same seed gives the same
split on every machine and every run; the split is saved in the run directory as split.json.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

from collections.abc import Sequence
from typing import Any

import numpy as np

from realfake.contract import HOLDOUT
from realfake.errors import RealfakeError

SEED_FRACTIONS = (0.7, 0.2, 0.1)  # train, val, test
OFFICIAL_VAL_FRACTION = 0.1


def _stratified_parts(
    indices: np.ndarray, labels: np.ndarray, fractions: Sequence[float], rng: np.random.Generator
) -> list[np.ndarray]:
    """Cut each class's indices by `fractions` (rounded), so every part keeps the class balance."""
    parts: list[list[int]] = [[] for _ in fractions]
    for cls in np.unique(labels[indices]):
        members = rng.permutation(indices[labels[indices] == cls])
        bounds = np.round(np.cumsum(fractions)[:-1] * len(members)).astype(int)
        for part, chunk in zip(parts, np.split(members, bounds), strict=True):
            part.extend(chunk.tolist())
    return [np.array(sorted(p), dtype=np.int64) for p in parts]


def make_split(
    labels: np.ndarray, split_folders: Sequence[str | None], protocol: str, seed: int,
    sources: Sequence[str | None] | None = None,
) -> dict[str, np.ndarray]:
    """Indices for train/val/test under `protocol` ("seed", "official" or "holdout:SOURCE")."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    everything = np.arange(len(labels))
    if protocol == "seed":
        train, val, test = _stratified_parts(everything, labels, SEED_FRACTIONS, rng)
    elif protocol == "official":
        folders = np.array([s or "" for s in split_folders])
        test = everything[folders == "test"]
        pool = everything[folders == "train"]
        if len(test) == 0 or len(pool) == 0:
            raise RealfakeError(
                "--protocol official needs CIFAKE's train/ and test/ folders; this data has "
                f"{len(pool)} train and {len(test)} test images. Use --protocol seed instead."
            )
        val, train = _stratified_parts(pool, labels, (OFFICIAL_VAL_FRACTION, 1 - OFFICIAL_VAL_FRACTION), rng)
    elif protocol.startswith(HOLDOUT):
        name = protocol[len(HOLDOUT):]
        src = np.array([s or "" for s in (sources if sources is not None else [None] * len(labels))], dtype=object)
        held = everything[src == name]
        if len(held) == 0:
            known = ", ".join(sorted(set(src.tolist()) - {""})) or "none (put images in REAL|FAKE/<source>/ or a CSV)"
            raise RealfakeError(f"--protocol {protocol}: no image has source {name!r}; sources here: {known}")
        train, val, test = _stratified_parts(everything[src != name], labels, SEED_FRACTIONS, rng)
        test = np.sort(np.concatenate([test, held]))
    else:
        raise RealfakeError(f"unknown protocol {protocol!r}: use seed, official or holdout:SOURCE")
    split = {"train": train, "val": val, "test": test}
    for name, idx in split.items():
        if len(idx) == 0:
            raise RealfakeError(f"the {name} split is empty: the data set is too small ({len(labels)} images)")
    return split


def split_to_json(split: dict[str, np.ndarray], **info: Any) -> dict[str, Any]:
    return {**info, **{k: v.tolist() for k, v in split.items()}}


def split_from_json(d: dict[str, Any], n: int) -> dict[str, np.ndarray]:
    """Read a saved split, refusing one that points outside the data set it is applied to."""
    split = {k: np.asarray(d[k], dtype=np.int64) for k in ("train", "val", "test")}
    for k, idx in split.items():
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise RealfakeError(f"saved {k} split does not fit the data set ({n} images); was the data changed?")
    return split
