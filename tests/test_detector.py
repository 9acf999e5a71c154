"""Detector: one API over a run directory (PyTorch) or an exported file, with early, readable errors."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from realfake.detector import Detector, Prediction, check_images
from realfake.errors import RealfakeError


@pytest.fixture(scope="module")
def detector(trained_run):
    return Detector.load(trained_run, device="cpu")


def test_predict_accepts_every_input_kind(detector, tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    kinds = [str(tmp_path / "a.png"), tmp_path / "a.png", buf.getvalue(), Image.fromarray(arr), arr,
             arr.astype(np.float32) / 255.0]
    preds = [detector.predict(k) for k in kinds]
    assert all(isinstance(p, Prediction) and p.error is None for p in preds)
    assert len({p.p_fake for p in preds}) == 1  # the same pixels, whatever the container
    expected = float(detector.predict_proba(arr[None])[0])
    assert preds[0].p_fake == round(expected, 6)
    ood = float(detector.calibration.ood_scores(detector.predict_logits(arr[None]))[0])
    assert preds[0].ood == round(ood, 4)
    by_threshold = "FAKE" if expected >= detector.threshold else "REAL"
    assert preds[0].label == ("uncertain" if ood > detector.calibration.ood.level else by_threshold)
    z = float(detector.predict_logits(arr[None])[0])
    assert preds[0].logit == z / detector.temperature  # the calibrated log-odds, in full: p_fake = sigmoid(logit)
    row = {"source": str(tmp_path / "a.png"), "p_fake": preds[0].p_fake, "logit": preds[0].logit,
           "label": preds[0].label, "threshold": detector.threshold, "ood": preds[0].ood, "width": 32, "height": 32,
           "crop": [0, 0, 32, 32]}  # all of a 32x32 input was judged, unreduced: no note
    if preds[0].label == "uncertain":
        row["reason"] = "ood"
    assert preds[0].to_dict() == row


def test_predict_many_keeps_order_and_reports_bad_items(detector, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    arr = np.full((40, 30, 3), 200, np.uint8)
    out = detector.predict([arr, tmp_path / "bad.jpg", tmp_path / "missing.png", arr], threshold=0.999999)
    assert [p.error is None for p in out] == [True, False, False, True]
    assert out[1].p_fake is None and out[1].label is None and "not an image" in out[1].error
    # the override, not the run's threshold; an image this far from FAKE may be atypical of REAL too
    assert out[0].label in ("REAL", "uncertain") and out[0].threshold == 0.999999
    assert out[1].to_dict()["error"] == out[1].error


def test_predict_proba_checks_its_input(detector):
    assert detector.predict_proba(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0,)
    p = detector.predict_proba(np.zeros((3, 32, 32, 3), np.uint8), batch_size=2)
    assert p.shape == (3,) and np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    for bad in (np.zeros((32, 32, 3), np.uint8), np.zeros((2, 3, 32, 32), np.uint8), np.zeros((2, 32, 32, 3))):
        with pytest.raises(RealfakeError, match="uint8"):
            detector.predict_proba(bad)
    assert check_images(np.zeros((1, 32, 32, 3), np.uint8)).shape == (1, 32, 32, 3)


def test_temperature_from_run_json_is_applied(trained_run, detector, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "temperature": 2.0, "threshold": 0.3}))
    calibrated = Detector.load(run, device="cpu")
    assert calibrated.threshold == 0.3 and calibrated.info["model"] == "seed-resnet50"
    x = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    logits = detector.predict_logits(x)
    np.testing.assert_allclose(calibrated.predict_proba(x), 1 / (1 + np.exp(-logits / 2.0)), rtol=1e-6)


def test_loading_leaves_the_callers_random_numbers_alone(trained_run):
    """The model's random initialisation, overwritten by its weights, does not use up the caller's random numbers."""
    torch.manual_seed(11)
    want = torch.rand(3)
    torch.manual_seed(11)
    Detector.load(trained_run, device="cpu")
    assert torch.equal(torch.rand(3), want)


def test_load_errors_are_one_line(trained_run, tmp_path):
    with pytest.raises(RealfakeError, match="not a trained run"):
        Detector.load(tmp_path)
    with pytest.raises(RealfakeError, match="backend must be"):
        Detector.load(trained_run, backend="tensorrt")
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(RealfakeError, match="is an ONNX file"):
        Detector.load(tmp_path / "m.onnx", backend="torch")
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(RealfakeError, match="cannot load") as err:
        Detector.load(run)
    assert "\n" not in str(err.value)
