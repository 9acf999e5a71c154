"""Grad-CAM: maps point at the evidence for FAKE, have the promised shape and range, share one scale per run,
and reach the CLI as overlays that state the verdict and that scale."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from realfake.calibration import Calibration
from realfake.cli import app
from realfake.detector import Detector, Explanation
from realfake.errors import RealfakeError
from realfake.explain import (
    CamScale,
    cam_layer,
    find_cam_layer,
    gradcam,
    heatmaps,
    raw_heatmaps,
    reference_scale,
    run_scale,
)
from realfake.infer import TorchBackend
from realfake.models import build
from realfake.onnxfile import OnnxBackend
from realfake.predict import save_overlay
from realfake.rundir import RunDir


class RegionMask(nn.Module):
    """Channel 0 is kept only in the top-left quadrant, channel 1 only in the bottom-right one."""

    def __init__(self, side: int) -> None:
        super().__init__()
        mask = torch.zeros(1, 2, side, side)
        h = side // 2
        mask[0, 0, :h, :h] = 1
        mask[0, 1, h:, h:] = 1
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


class TwoRegions(nn.Module):
    """A model whose logit rises with what it sees top-left and falls with what it sees bottom-right
    (or the other way round with sign=-1): the FAKE evidence lives in one known quadrant."""

    def __init__(self, sign: float = 1.0) -> None:
        super().__init__()
        conv = nn.Conv2d(3, 2, 3, padding=1)
        nn.init.constant_(conv.weight, 0.05)
        nn.init.constant_(conv.bias, 0.1)
        self.stage = nn.Sequential(conv, nn.ReLU(), nn.AvgPool2d(4), RegionMask(8))  # an 8x8 map
        self.sign = sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stage(x)
        return self.sign * (f[:, 0].mean((1, 2)) - f[:, 1].mean((1, 2)))


def quadrant_mass(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    total = maps.sum((1, 2))
    return maps[:, :16, :16].sum((1, 2)) / total, maps[:, 16:, 16:].sum((1, 2)) / total


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_heatmap_mass_sits_where_the_fake_evidence_is(sign):
    torch.manual_seed(0)
    model = TwoRegions(sign).eval()
    images = torch.rand(5, 3, 32, 32)
    maps = gradcam(model, model.stage, images)
    assert maps.shape == (5, 32, 32) and maps.dtype == np.float32
    top_left, bottom_right = quadrant_mass(maps)
    evidence, against = (top_left, bottom_right) if sign > 0 else (bottom_right, top_left)
    assert (evidence > 0.9).all(), evidence
    assert (against < 0.01).all(), against
    assert not model.stage._forward_hooks  # captum's hooks are gone afterwards


def test_no_positive_evidence_gives_an_all_zero_map():
    model = TwoRegions().eval()
    maps = gradcam(model, model.stage, torch.zeros(2, 3, 32, 32))  # both channels equal: logit 0, no evidence
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


def test_find_cam_layer_picks_the_last_stage_at_least_4x4():
    cnn = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16x16
        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),  # 4x4  <- the one
        nn.Conv2d(4, 4, 3, stride=2, padding=1),  # 2x2
        nn.Flatten(), nn.Linear(16, 1),
    )
    assert find_cam_layer(cnn) is cnn[5]
    assert cam_layer(cnn) is cnn[5]
    with pytest.raises(RealfakeError, match="cam_layer"):
        find_cam_layer(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 1)))


def test_seed_resnet50_declares_a_layer_with_spatial_extent():
    model = build("seed-resnet50", "none").model.eval()
    assert cam_layer(model) is model.backbone[4]  # layer1: 8x8 at 32x32 (layer4 would be 1x1)
    assert find_cam_layer(model) is model.backbone[5]  # without the declaration: layer2, the last 4x4 stage
    maps = heatmaps(model, np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    assert maps.shape == (3, 32, 32)


@pytest.fixture(scope="module")
def detector(trained_run):
    return Detector.load(trained_run, device="cpu")


def test_detector_explain_shapes_range_determinism(detector, tmp_path):
    rng = np.random.default_rng(2)
    arrays = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    Image.fromarray(arrays[0]).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    first = detector.explain([tmp_path / "a.png", tmp_path / "bad.png", arrays[1], arrays[2]])
    again = detector.explain([tmp_path / "a.png", tmp_path / "bad.png", arrays[1], arrays[2]])
    assert [e.ok for e in first] == [True, False, True, True]
    preds = detector.predict([tmp_path / "a.png", tmp_path / "bad.png", arrays[1], arrays[2]])
    for ex, ex2, pred in zip(first, again, preds, strict=True):
        assert ex.prediction == pred  # the verdict is predict()'s, to the digit
        if ex.ok:
            assert ex.heatmap.shape == (32, 32) and ex.heatmap.dtype == np.float32
            assert np.isfinite(ex.heatmap).all() and ex.heatmap.min() >= 0 and ex.heatmap.max() <= 1
            np.testing.assert_array_equal(ex.heatmap, ex2.heatmap)
    np.testing.assert_array_equal(first[0].image, arrays[0])  # the image the model saw, for the overlay
    np.testing.assert_array_equal(first[2].image, arrays[1])
    single = detector.explain(arrays[1])
    assert isinstance(single, Explanation)
    # alone or in a batch: the same map, up to float32 noise (the convolution algorithm depends on batch size,
    # and a barely trained model's small, cancelling gradients magnify it)
    np.testing.assert_allclose(single.heatmap, first[2].heatmap, atol=0.05)
    with pytest.raises(RealfakeError, match="no heatmap"):
        first[1].overlay_png()


def test_overlay_png_opens_at_the_asked_size(detector):
    ex = detector.explain(np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    for size in (256, 64):
        img = Image.open(io.BytesIO(ex.overlay_png(size=size)))
        assert img.format == "PNG" and img.size == (size, size) and img.mode == "RGB"


def test_onnx_detector_cannot_explain():
    det = Detector(OnnxBackend(session=None), Calibration())
    assert not det.can_explain
    with pytest.raises(RealfakeError, match="explanations need the PyTorch run, not an ONNX file"):
        det.explain(np.zeros((32, 32, 3), np.uint8))


def test_cli_predict_explain_writes_overlays(trained_run, tmp_path):
    rng = np.random.default_rng(4)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "in" / "cat.png")
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(tmp_path / "in" / "sub" / "cat.jpg")
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "cams"
    result = CliRunner().invoke(
        app, ["predict", str(trained_run), str(tmp_path / "in"), "--explain", str(out), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 3 and sum(d.get("label") in ("REAL", "FAKE") for d in lines) == 2
    by_name = {d["path"].rsplit("/", 1)[-1]: d for d in lines}
    assert "heatmap" not in by_name["broken.png"] and by_name["broken.png"]["error"]
    heatmaps_written = {by_name["cat.png"]["heatmap"], by_name["cat.jpg"]["heatmap"]}
    assert heatmaps_written == {str(out / "cat.cam.png"), str(out / "cat-2.cam.png")}  # same stem, no overwrite
    for path in heatmaps_written:
        png = Image.open(path)
        assert png.size[0] == 256 and png.size[1] > 256  # the overlay, then the verdict and scale strip
        row = by_name["cat.png"] if path.endswith("cat.cam.png") else by_name["cat.jpg"]
        assert png.text["realfake:label"] == row["label"] and float(png.text["realfake:p_fake"]) == row["p_fake"]
        assert float(png.text["realfake:heatmap_scale"]) > 0
        assert RunDir.SAMPLES in png.text["realfake:heatmap_scale_basis"]

    result = CliRunner().invoke(app, ["predict", str(trained_run), str(tmp_path / "in"), "--backend", "torch",
                                      "--explain", str(tmp_path / "in" / "cat.png")])
    assert result.exit_code == 1 and "is a file" in result.output


# --- one scale per run -----------------------------------------------------------------------------------------


def quadrants(top_left: int, bottom_right: int) -> np.ndarray:
    """A 32x32 uint8 image, grey `top_left` in that quadrant and `bottom_right` in the opposite one, black else:
    for TwoRegions, the top-left brightness is the evidence for FAKE and the bottom-right the evidence against."""
    img = np.zeros((32, 32, 3), np.uint8)
    img[:16, :16], img[16:, 16:] = top_left, bottom_right
    return img


@pytest.fixture
def region_run(tmp_path):
    """A Detector on TwoRegions whose run folder holds samples.npz: FAKE samples with mid evidence, REAL samples
    with far more (which must not count: the scale is taken on FAKE images only)."""
    samples = np.stack([quadrants(120, 0), quadrants(160, 0), quadrants(255, 0), quadrants(255, 0)])
    labels = np.array([1, 1, 0, 0])
    np.savez_compressed(tmp_path / RunDir.SAMPLES, images=samples, labels=labels, p_fake=np.full(4, 0.5))
    torch.manual_seed(0)
    model = TwoRegions().eval()
    det = Detector(TorchBackend(model, torch.device("cpu"), precision="fp32"), Calibration(), run_dir=tmp_path)
    return det, model, samples[labels == 1]


def test_run_scale_is_the_99th_percentile_of_the_fake_samples(region_run, tmp_path):
    det, model, fakes = region_run
    scale = run_scale(tmp_path, model, model.stage)
    raw = raw_heatmaps(model, fakes, model.stage)
    assert scale.value == pytest.approx(float(np.quantile(raw, 0.99)), rel=1e-6)
    assert scale.value == reference_scale(model, fakes, model.stage)
    samples = np.load(tmp_path / RunDir.SAMPLES)["images"]
    assert scale.value < reference_scale(model, samples, model.stage)  # the bright REAL samples were left out
    assert "99th percentile" in scale.basis and "2 FAKE test samples" in scale.basis
    assert scale.to_dict() == {"value": scale.value, "basis": scale.basis}


def test_every_image_of_a_run_is_divided_by_the_same_number(region_run):
    det, model, _ = region_run
    fake, real = quadrants(255, 0), quadrants(40, 255)
    together = det.explain([fake, real])
    apart = [det.explain(fake), det.explain(real)]
    assert [e.prediction.label for e in together] == ["FAKE", "REAL"]
    raw = raw_heatmaps(model, np.stack([fake, real]), model.stage)
    scale = together[0].scale
    assert isinstance(scale, CamScale) and scale.value is not None and scale.value > 0
    for ex, ex_alone, raw_map in zip(together, apart, raw, strict=True):
        assert ex.scale == scale and ex_alone.scale == scale
        np.testing.assert_allclose(ex.heatmap, np.clip(raw_map / scale.value, 0, 1), atol=1e-5)
        np.testing.assert_allclose(ex_alone.heatmap, ex.heatmap, atol=1e-5)
    # maps keep the raw maps' proportions (a per-image scale would make both peaks 1)
    assert together[1].heatmap.max() == pytest.approx(raw[1].max() / scale.value, rel=1e-4)
    assert together[0].heatmap.max() == 1.0  # far beyond the run's reference: clipped, not stretched


def test_a_real_verdict_with_weak_evidence_gets_a_weak_map(region_run):
    det, model, _ = region_run
    ex = det.explain(quadrants(10, 255))
    assert ex.prediction.label == "REAL"
    raw = raw_heatmaps(model, ex.image[None], model.stage)[0]
    assert raw.max() > 0  # there is a little evidence for FAKE...
    assert 0 < ex.heatmap.max() < 0.25  # ...and it shows as little, not stretched to full colour
    per_image = gradcam(model, model.stage, torch.tensor(ex.image[None]).permute(0, 3, 1, 2).float() / 255)
    assert per_image.max() == pytest.approx(1.0)  # what the old per-image scale showed for the same image


def test_without_fake_samples_the_maps_fall_back_to_each_own_maximum_and_say_so(tmp_path):
    model = TwoRegions().eval()
    det = Detector(TorchBackend(model, torch.device("cpu"), precision="fp32"), Calibration(), run_dir=tmp_path)
    ex = det.explain(quadrants(10, 255))
    assert ex.scale is not None and ex.scale.value is None and RunDir.SAMPLES in ex.scale.basis
    assert ex.heatmap.max() == pytest.approx(1.0)
    assert "own maximum" in ex.scale.describe()
    bare = Detector(TorchBackend(model, torch.device("cpu"), precision="fp32"), Calibration())
    assert bare.explain(quadrants(10, 255)).scale.value is None


def test_trained_run_scale_comes_from_its_samples(detector, trained_run):
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    both = detector.explain(images)
    alone = detector.explain(images[1])
    expected = run_scale(trained_run, detector.model, cam_layer(detector.model))
    assert expected.value is not None and expected.value > 0
    assert both[0].scale == both[1].scale == alone.scale
    assert alone.scale.value == pytest.approx(expected.value, rel=1e-4)
    raw = raw_heatmaps(detector.model, np.stack(images), cam_layer(detector.model))
    np.testing.assert_allclose(both[0].heatmap, np.clip(raw[0] / alone.scale.value, 0, 1), atol=1e-4)


def test_overlay_file_states_the_verdict_and_the_scale(region_run, tmp_path):
    det, _, _ = region_run
    fake, real = det.explain([quadrants(255, 0), quadrants(10, 255)])
    written = {}
    for name, ex in (("fake", fake), ("real", real)):
        ex.prediction.source = f"{name}.png"
        written[name] = Image.open(save_overlay(ex, tmp_path / "cams", size=128))
    for name, ex in (("fake", fake), ("real", real)):
        png = written[name]
        assert png.mode == "RGB" and png.size[0] >= 128 and png.size[1] > 128 + 40  # a strip below the overlay
        assert png.text["realfake:label"] == ex.prediction.label
        assert float(png.text["realfake:p_fake"]) == ex.prediction.p_fake
        assert float(png.text["realfake:heatmap_scale"]) == ex.scale.value
        assert png.text["realfake:heatmap_scale_basis"] == ex.scale.basis
    strip = {k: np.asarray(v)[128:] for k, v in written.items()}
    for pixels in strip.values():
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # text and a colour bar, not a blank band
    assert not np.array_equal(strip["fake"], strip["real"])  # the verdict line differs
    # the overlay part is the plain overlay, unchanged
    top = np.asarray(written["real"])[: 128, (written["real"].size[0] - 128) // 2:][:, :128]
    np.testing.assert_array_equal(top, np.asarray(real.overlay(128)))
