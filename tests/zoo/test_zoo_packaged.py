"""The zoo shipped inside the package: every file small, fp16, trained on CIFAR-10's 50,000 training images, and
able to draw finite, varied images (so `train --extra-fakes zoo` works offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from realfake.zoo.builtin import ZOO_ENV, builtin_zoo, packaged_dir
from realfake.zoo.families import FAMILIES
from realfake.zoo.sample import sample_images
from realfake.zoo.weights import load_generator

MAX_BYTES = 3 * 2**20


@pytest.fixture()
def shipped(monkeypatch: pytest.MonkeyPatch) -> list:
    monkeypatch.delenv(ZOO_ENV, raising=False)
    folder = packaged_dir()
    if not any(Path(folder).glob("*.safetensors")):
        pytest.fail(f"no generator is packaged in {folder}")
    return builtin_zoo()


def test_every_packaged_generator_is_small_fp16_and_named_for_its_family(shipped: list) -> None:
    for member in shipped:
        assert member.path.stat().st_size < MAX_BYTES, member.path
        assert member.path.stem == member.family and member.family in FAMILIES
        assert member.info.n_real_images == 50_000  # CIFAR-10's training split, REAL only
        net, _ = load_generator(member.path)
        weights = [p for p in net.state_dict().values() if p.dtype.is_floating_point]  # BatchNorm counts are ints
        assert weights and all(bool(p.isfinite().all()) for p in weights)


def test_packaged_generators_draw_finite_varied_images(shipped: list) -> None:
    for member in shipped:
        if member.family == "ddpm":
            continue  # 100 network passes an image: too slow for the fast tier; loading is checked above
        net, info = load_generator(member.path)
        images = sample_images(net, info, 8, seed=0)
        assert images.shape == (8, 32, 32, 3) and images.dtype == np.uint8
        assert images.std() > 5  # not a constant or collapsed output
        assert not np.array_equal(images[0], images[1])  # different noise, different images


def test_every_family_ships(shipped: list) -> None:
    """`--extra-fakes zoo` and `--lofo` use the whole zoo offline: one packaged generator per family, no more."""
    assert sorted(m.family for m in shipped) == sorted(FAMILIES)
