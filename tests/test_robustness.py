"""Degradations (determinism, effect), class-restricted application, the sweep, per-source grouping and the
robust training augmentation, with its artefact simulation."""

import numpy as np
import pytest
import torch

from realfake.calibration import Calibration
from realfake.data.batches import (
    SIM_KINDS,
    ArtefactSimulation,
    Batch,
    RobustAugment,
    decoder_residual,
    gaussian_blur,
    jpeg_roundtrip,
    train_batches,
)
from realfake.errors import RealfakeError
from realfake.metrics import condition_metrics
from realfake.robustness import DEGRADATIONS, Degradation, apply_to, degrade, sweep


@pytest.fixture(scope="module")
def images():
    """Smooth gradients plus texture: JPEG, blur and resampling all have something to change."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:32, 0:32]
    base = np.stack([xx * 8, yy * 8, (xx + yy) * 4], axis=-1).astype(np.float64)
    return np.stack([np.clip(base + rng.normal(0, 20, base.shape), 0, 255) for _ in range(6)]).astype(np.uint8)


def test_the_sweep_covers_the_issue_list():
    assert [d.name for d in DEGRADATIONS] == [
        "jpeg95", "jpeg75", "jpeg50", "jpeg30", "blur0.5", "blur1", "blur2", "resample0.5", "resample0.25",
        "noise2", "noise5", "noise10",
    ]


@pytest.mark.parametrize("d", DEGRADATIONS, ids=lambda d: d.name)
def test_each_degradation_is_deterministic_and_changes_the_image(images, d):
    a = degrade(images, d, seed=1)
    b = degrade(images.copy(), d, seed=1)
    assert a.dtype == np.uint8 and a.shape == images.shape
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, images)
    if d.kind == "noise":
        assert degrade(images, d, seed=2).tobytes() != a.tobytes()
    else:
        assert degrade(images, d, seed=2).tobytes() == a.tobytes()  # nothing random to seed


def test_stronger_degradations_move_pixels_further(images):
    def dist(d):
        return np.abs(degrade(images, d, 0).astype(int) - images).mean()

    assert dist(Degradation("jpeg", 95)) < dist(Degradation("jpeg", 30))
    assert dist(Degradation("blur", 0.5)) < dist(Degradation("blur", 2))
    assert dist(Degradation("noise", 2)) < dist(Degradation("noise", 10))
    assert dist(Degradation("resample", 0.5)) < dist(Degradation("resample", 0.25))
    noise = degrade(images, Degradation("noise", 5), 0).astype(float) - images
    assert 3.5 < noise.std() < 6.0  # sigma on the 0-255 scale (a little clipping at the ends)


def test_degrade_refuses_other_arrays(images):
    with pytest.raises(RealfakeError, match="uint8"):
        degrade(images.astype(np.float32), DEGRADATIONS[0])


def test_real_only_and_fake_only_touch_the_right_subset(images):
    labels = np.array([0, 1, 0, 1, 1, 0])
    degraded = degrade(images, Degradation("blur", 1), 0)
    for target, cls in (("REAL", 0), ("FAKE", 1)):
        mixed = apply_to(images, degraded, labels, target)
        assert np.array_equal(mixed[labels == cls], degraded[labels == cls])
        assert np.array_equal(mixed[labels != cls], images[labels != cls])
    assert apply_to(images, degraded, labels, "all") is degraded
    # works on logits (1-D) the same way
    z = apply_to(np.zeros(6), np.ones(6), labels, "FAKE")
    assert z.tolist() == labels.tolist()
    with pytest.raises(RealfakeError):
        apply_to(images, degraded, labels, "BOTH")


def test_sweep_rows_and_per_source_grouping(images):
    labels = np.array([0, 0, 0, 1, 1, 1])
    sources = ["cam", "cam", "cam", "genA", "genA", "genB"]
    calls = []

    def logits_fn(x):  # a stand-in model that is always right, so every row is easy to predict
        calls.append(len(x))
        return np.where(np.arange(len(x)) >= 3, 5.0, -5.0)

    cal = Calibration(threshold=0.5)
    rows = sweep(logits_fn, images, labels, cal, sources, seed=0)
    assert len(rows) == 1 + 3 * len(DEGRADATIONS)
    assert len(calls) == 1 + len(DEGRADATIONS)  # one model pass per degradation serves all three targets
    assert rows[0]["condition"] == "clean" and rows[0]["accuracy"] == 1.0 and rows[0]["roc_auc"] == 1.0
    assert {r["applied_to"] for r in rows[1:]} == {"all", "REAL", "FAKE"}
    assert rows[0]["per_source"] == {"cam": {"n": 3, "accuracy": 1.0}, "genA": {"n": 2, "accuracy": 1.0},
                                     "genB": {"n": 1, "accuracy": 1.0}}


def test_condition_metrics_per_class_and_source():
    labels = np.array([0, 0, 1, 1])
    logits = np.array([-2.0, 2.0, 2.0, -2.0])  # one mistake in each class
    m = condition_metrics(labels, logits, Calibration(threshold=0.5), ["a", "b", "b", None])
    assert m["accuracy"] == 0.5 and m["accuracy_real"] == 0.5 and m["accuracy_fake"] == 0.5
    assert m["per_source"]["b"] == {"n": 2, "accuracy": 0.5}
    assert m["per_source"]["(none)"]["accuracy"] == 0.0
    assert "per_source" not in condition_metrics(labels, logits, Calibration(), None)


def test_jpeg_roundtrip_per_image_quality(images):
    both = jpeg_roundtrip(images[:2], np.array([95, 30]))
    assert np.array_equal(both[0], jpeg_roundtrip(images[:1], 95)[0])
    assert np.array_equal(both[1], jpeg_roundtrip(images[1:2], 30)[0])


def test_jpeg_roundtrip_gives_pillows_bytes(images, monkeypatch):
    """The fast codec (torchvision's libjpeg calls) must give exactly what Pillow gives: the recipe was measured
    with Pillow's JPEG, and the robustness sweep's 'jpegQ' is what a user's Pillow or camera writes."""
    from realfake.data import batches

    rng = np.random.default_rng(3)
    noisy = rng.integers(0, 256, (4, 17, 9, 3), dtype=np.uint8)  # odd sizes: partial 8x8 and chroma blocks
    read_only = images.copy()
    read_only.setflags(write=False)  # the cache's memory map is read-only
    monkeypatch.setattr(batches, "_jpeg_codec", lambda: batches._pillow_roundtrip)
    pillow = [jpeg_roundtrip(x, q) for x in (images, noisy) for q in (1, 30, 75, 100)]
    monkeypatch.undo()
    assert batches._jpeg_codec() is not batches._pillow_roundtrip  # the fast path is the one measured here
    fast = [jpeg_roundtrip(x, q) for x in (read_only, noisy) for q in (1, 30, 75, 100)]
    assert all(np.array_equal(a, b) for a, b in zip(pillow, fast, strict=True))
    assert not np.array_equal(pillow[1], images)  # quality 30 changed something


def test_gaussian_blur_on_tensors():
    x = torch.rand(3, 3, 32, 32)
    y = gaussian_blur(x, torch.tensor([0.0, 1.0, 2.0]))
    assert torch.allclose(y[0], x[0], atol=1e-6)  # sigma 0 passes through
    assert y[1].std() < x[1].std() and y[2].std() < y[1].std()
    assert torch.allclose(y.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.02)  # blur keeps brightness


def test_robust_augment_changes_some_images_and_repeats_with_the_seed(images):
    x = torch.from_numpy(np.concatenate([images] * 10)).permute(0, 3, 1, 2)  # 60 images, uint8 NCHW
    y = torch.zeros(len(x), dtype=torch.long)
    aug = RobustAugment(jpeg_p=0.5, jpeg_quality=(30, 60), blur_p=0.5, blur_sigma=(0.5, 1.5))

    def one_epoch(seed, robust):
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([b for b, _ in train_batches(x, y, 64, gen, augment=False, robust=robust)])

    plain, a, b = one_epoch(0, None), one_epoch(0, aug), one_epoch(0, aug)
    assert torch.equal(a, b)
    changed = (a - plain).abs().flatten(1).amax(1) > 1e-6
    assert 0.5 < changed.float().mean() < 1.0  # about 1 - 0.5 * 0.5 = 75% touched
    off = RobustAugment(jpeg_p=0.0, blur_p=0.0)
    assert torch.equal(one_epoch(0, off), plain)


def test_artefact_simulation_repeats_with_the_seed_and_only_makes_fakes_from_reals(images):
    x = torch.from_numpy(np.concatenate([images] * 20)).permute(0, 3, 1, 2).contiguous()  # 120 images
    y = (torch.arange(len(x)) % 2).float()  # odd slots FAKE
    sim = ArtefactSimulation(fake_share=0.5)

    batch = Batch(torch.arange(len(x)), y)

    def once(seed):
        return sim.apply(x, batch, torch.Generator().manual_seed(seed))

    a, b, other = once(3), once(3), once(4)
    assert torch.equal(a, b)  # the same generator state draws the same decoders, picks and amplitudes
    assert not torch.equal(a, other)
    changed = (a.int() - x.int()).abs().flatten(1).amax(1) > 0
    fake_changed = changed[y > 0.5].float().mean()
    assert 0.25 < fake_changed < 0.75  # about half the FAKE slots replaced
    assert 0.25 < changed[y < 0.5].float().mean() < 0.75  # as many REAL slots re-compressed, labels untouched
    # a simulated FAKE is a REAL image of the batch, JPEG-saved, plus a residual of at most 8/255 x its std
    reals = x[y < 0.5]
    saved = torch.from_numpy(jpeg_roundtrip(reals.permute(0, 2, 3, 1).numpy(), 75)).permute(0, 3, 1, 2).float()
    for i in torch.nonzero(changed & (y > 0.5)).flatten()[:5]:
        gaps = (saved - a[i].float()).abs().mean(dim=(1, 2, 3))
        assert gaps.min() < 8 < gaps.median()  # near its source, not near the batch's other REALs
    assert torch.equal(ArtefactSimulation(fake_share=0.0).apply(x, batch, torch.Generator().manual_seed(3)), x)


@pytest.mark.parametrize("kind", SIM_KINDS)
def test_each_decoder_kind_doubles_the_size_and_is_normalised(kind):
    down = torch.rand(4, 3, 16, 16)
    r = decoder_residual(down, torch.Generator().manual_seed(0), kind)
    assert r.shape == (4, 3, 32, 32)
    assert torch.allclose(r.flatten(1).std(1), torch.ones(4), atol=1e-3)
    assert torch.equal(r, decoder_residual(down, torch.Generator().manual_seed(0), kind))
    with pytest.raises(ValueError, match="unknown decoder kind"):
        decoder_residual(down, torch.Generator(), "lanczos")
