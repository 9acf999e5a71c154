"""Extra FAKE images mixed into training (`train --extra-fakes DIR_OR_ZIP`): say, the generator zoo's samples
(`realfake zoo sample`), so a user with real CIFAKE broadens the detector's idea of FAKE without a download.

The rule, and why: the extra fakes go into the TRAINING split only. Validation (calibration, early stopping)
and the test split stay the user's own data, so the home figures a run reports mean what they meant without
the extras: how the detector does on <data>. To keep the classes balanced, the extras do not add FAKE slots,
they take a share of them: `extra_fakes_share` of the training split's FAKE images are extras, the user's own
training fakes are subsampled to make room (the dropped ones go to no split). Each family (first folder below
FAKE/) counts as a training source, so no report calls it "never trained on".

The extra images are appended after the data's own, so every index of the data's own images is unchanged, and
a run's split.json points at the same images in `run_data` for train, resume, evaluate and quantize alike.

A generator zoo may stand in for the images: `zoo` (or `builtin`) names the zoo shipped in the package, and a
folder of trained generators (`realfake zoo train` folders, or packed `<family>.safetensors`) is told from a
folder of images by looking. Then as many images as the share needs are sampled, split evenly over the families,
from the run's seed, and cached (`realfake.zoo.extras`); the run files name the generators and their digests.

Not enforced, only documented: the extra fakes must not be the set a run is later judged on as "held out"
(a zoo family sampled into the extras is a seen source, which the reports say).
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from realfake.contract import CLASS_NAMES, HOLDOUT
from realfake.data.cache import Dataset, load_dataset
from realfake.data.sources import open_source
from realfake.errors import RealfakeError

FAKE = CLASS_NAMES.index("FAKE")
PATH_PREFIX = "extra-fakes/"  # marks the extra images' paths in predictions and reports


def check_extra_fakes(path: str | Path) -> None:
    """Refuse, in one line, an extra-fakes set that is missing or holds a REAL image: it adds FAKEs only. A zoo
    (the word, or a folder of generators) is checked by listing its generators' headers."""
    from realfake.zoo.builtin import zoo_members

    if zoo_members(path) is not None:
        return
    p = Path(path).expanduser()
    if not p.exists():
        raise RealfakeError(f"--extra-fakes {path}: no such folder or zip")
    items = open_source(p).items()
    real = [it.path for it in items if it.label != FAKE]
    if real:
        raise RealfakeError(f"--extra-fakes {path} holds {len(real)} REAL image(s) (first: {real[0]}); "
                            "it must hold FAKE images only (FAKE/<family>/...)")


def saved_form(path: str | Path) -> str:
    """How a run's config keeps --extra-fakes: the zoo's word as it is, a path made absolute."""
    from realfake.zoo.builtin import is_zoo_word

    return str(path).strip().lower() if is_zoo_word(path) else str(Path(path).expanduser().resolve())


def with_extra_fakes(ds: Dataset, path: str | Path, seed: int, workers: int | None = None,
                     progress: bool = True, share: float = 0.5, protocol: str = "seed",
                     log: Callable[[str], None] = lambda m: None) -> Dataset:
    """`ds` with the extra fakes appended (their split folder None, their source their family); `ds.extra_start`
    says where they begin. The images are copied into one in-memory array. When `path` names generators, the
    images `share` needs of `ds`'s training fakes under `protocol` are sampled first (`ds.extra_origin` says how)."""
    from realfake.zoo.builtin import zoo_members

    check_extra_fakes(path)
    origin = None
    zoo = zoo_members(path)
    if zoo is not None:
        from realfake.data.splits import make_split
        from realfake.zoo.extras import zoo_extras

        train = make_split(ds.labels, ds.splits, protocol, seed, ds.sources)["train"]
        need = max(1, int(round(share * int((ds.labels[train] == FAKE).sum()))))
        sampled = zoo_extras(*zoo, need, seed, log=log)
        path, origin = sampled.folder, sampled.provenance
    extra = load_dataset(Path(path).expanduser(), None, seed, workers, progress)
    if np.any(extra.labels != FAKE):  # check_extra_fakes read the listing; the decoded set must agree
        raise RealfakeError(f"--extra-fakes {path}: holds REAL images; it must hold FAKE images only")
    n = len(ds)
    return replace(
        ds,
        images=np.concatenate([np.asarray(ds.images), np.asarray(extra.images)]),
        labels=np.concatenate([ds.labels, extra.labels]),
        paths=[*ds.paths, *(PATH_PREFIX + p for p in extra.paths)],
        splits=[*ds.splits, *([None] * len(extra))],
        sources=[*ds.sources, *extra.sources],
        skipped=[*ds.skipped, *({**s, "path": PATH_PREFIX + s["path"]} for s in extra.skipped)],
        extra_start=n,
        extra_origin=origin,
    )


def own_part(ds: Dataset) -> Dataset:
    """The data's own images (without any extra fakes): views, not copies."""
    if ds.extra_start is None:
        return ds
    n = ds.extra_start
    return replace(ds, images=ds.images[:n], labels=ds.labels[:n], paths=ds.paths[:n], splits=ds.splits[:n],
                   sources=ds.sources[:n], skipped=[s for s in ds.skipped if not s["path"].startswith(PATH_PREFIX)],
                   extra_start=None, extra_origin=None)


def check_protocol_against(ds: Dataset, protocol: str, path: str | Path) -> None:
    """A held-out source must not come in through the extras: it would be trained on and then 'held out'."""
    if ds.extra_start is None or not protocol.startswith(HOLDOUT):
        return
    name = protocol[len(HOLDOUT):]
    if name in set(ds.sources[ds.extra_start:]):
        raise RealfakeError(f"--protocol {protocol}: the extra fakes ({path}) hold images of {name!r}; "
                            "a held-out source must not be trained on")


def mix_into_split(ds: Dataset, split: dict[str, np.ndarray], share: float, seed: int, path: str | Path,
                   ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Put extra fakes into the training split as `share` of its FAKE images, dropping as many of the data's
    own training fakes; val and test are untouched. Returns the new split and what was done (for run files)."""
    if ds.extra_start is None:
        raise RealfakeError("internal: no extra fakes in this data set")
    n_own = ds.extra_start
    rng = np.random.default_rng(seed)
    train = split["train"]
    own_fakes = train[ds.labels[train] == FAKE]
    extras = np.arange(n_own, len(ds))
    k = min(int(round(share * len(own_fakes))), len(extras))
    if k == 0:
        raise RealfakeError(f"--extra-fakes {path}: no extra fake fits (share {share:g} of "
                            f"{len(own_fakes)} training fakes, {len(extras)} extra images)")
    used = np.sort(rng.permutation(extras)[:k])
    dropped = np.sort(rng.permutation(own_fakes)[:k])
    new_train = np.sort(np.concatenate([np.setdiff1d(train, dropped), used]))
    per_family = Counter(ds.sources[int(i)] or "(no family)" for i in used)
    available = Counter(ds.sources[int(i)] or "(no family)" for i in extras)
    info = {
        "path": ds.extra_origin["from"] if ds.extra_origin else str(Path(path).expanduser().resolve()),
        "share_requested": share,
        "share": round(k / len(own_fakes), 6),  # of the training split's FAKE images
        "n_available": len(extras),
        "n_used": k,
        "n_own_fakes_dropped": k,
        "per_family": dict(sorted(per_family.items())),
        "available_per_family": dict(sorted(available.items())),
        "in_splits": ["train"],
        "home_metrics": "the validation and test splits are the data's own images only; the extra fakes are "
                        "in training alone and count toward no reported home figure",
        **({"zoo": ds.extra_origin} if ds.extra_origin else {}),
    }
    return {**split, "train": new_train}, info


def describe(info: dict[str, Any], data_name: str) -> str:
    """The report's one sentence on a run's extra fakes: how many, which families, what share, where the home
    figures come from."""
    fams = ", ".join(f"{k} ({v:,})" for k, v in (info.get("per_family") or {}).items()) or "none"
    share = info.get("share")
    share_text = f"{share:.0%}" if isinstance(share, int | float) else "an unrecorded share"
    zoo = info.get("zoo")
    how = f" (sampled with seed {zoo.get('seed')}, JPEG q{zoo.get('jpeg_quality')})" if isinstance(zoo, dict) else ""
    return (f"Trained also on {info.get('n_used', 0):,} extra fakes from {info.get('path')}{how} of families {fams} "
            f"({share_text} of the FAKE training images; as many of the data's own training fakes left out). "
            f"They are in training only: the home test and validation figures are on {data_name} alone.")
