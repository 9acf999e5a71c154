"""int8 export: the quantised file is int8, says so, loads like any realfake ONNX file and predicts like fp32.

One small `fast` run (1 epoch on 400 mini images, about 60% test accuracy: weak, so many images sit near the
threshold, which makes label agreement a harder test than on a good model) is exported once through the CLI.
It is compared with the run's PyTorch Detector, which the fp32 file matches to 1e-4 (tests/test_export.py),
so no second trace is needed. Measured at these sizes: labels agree on 98.8% of 500 mini images,
median |logit change| 3% of the logits' spread (with `fast` version 2, ReLU: 97.6% and 4.4%; version 1 on the
same day 98.2% and 3.4%); a file quantised without reduce_range on a CPU without VNNI
agreed on 76% and fails here.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from realfake.cli import app
from realfake.data.cache import load_dataset
from realfake.detector import Detector
from realfake.errors import RealfakeError
from realfake.export import export_onnx
from realfake.quantize import calibration_set

CALIBRATION_IMAGES = 128
# Stated tolerances of int8 against fp32 on 500 mini images (one image is 0.2 points).
MIN_AGREEMENT = 0.95
MAX_ACCURACY_POINTS = 2.0
MAX_MEDIAN_LOGIT_CHANGE = 0.1  # as a share of the fp32 logits' standard deviation


@pytest.fixture(scope="module")
def int8(quantize_run: Path) -> tuple[Path, str]:
    result = CliRunner().invoke(app, ["export", str(quantize_run), "--quantize", "int8",
                                      "--calibration-images", str(CALIBRATION_IMAGES)])
    assert result.exit_code == 0, result.output
    return quantize_run / "model.int8.onnx", result.stdout


def test_int8_file_is_int8_and_says_so(quantize_run, int8):
    path, stdout = int8
    assert stdout.strip() == str(path) and path.is_file()
    assert not [p.name for p in quantize_run.iterdir() if p.name.endswith(".tmp")]
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 10 and ops.count("DequantizeLinear") >= 10
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 10  # every convolution's weights (12 per TTA'd fast graph, shared: at least 10)
    assert [o.name for o in model.graph.output] == ["p_fake", "logit", "ood"]  # the run has an OOD score
    det = Detector.load(path)
    q = det.info["quantization"]
    assert q["dtype"] == "int8" and q["calibration_images"] == CALIBRATION_IMAGES
    assert "training split" in q["calibration_data"] and "standin-cifake-mini.zip" in q["calibration_data"]
    run = Detector.load(quantize_run, device="cpu")
    assert det.threshold == run.threshold and det.temperature == run.temperature
    assert det.info["model"] == "fast" and det.info["tta"] == run.info["tta"]
    assert "quantization" not in run.info


def test_int8_predicts_like_fp32_within_the_stated_tolerance(mini_zip, quantize_run, int8):
    ds = load_dataset(mini_zip, limit=500, seed=1, progress=False)  # parity, not accuracy: some were trained on
    images, labels = np.asarray(ds.images), ds.labels
    fp32, q = Detector.load(quantize_run, device="cpu", precision="fp32"), Detector.load(int8[0])
    z32, z8 = fp32.predict_logits(images), q.predict_logits(images)
    fake32 = fp32.calibration.is_fake(fp32.calibration.p_fake(z32))
    fake8 = q.calibration.is_fake(q.calibration.p_fake(z8))
    agreement = float((fake32 == fake8).mean())
    points = 100 * abs(float((fake32 == (labels == 1)).mean()) - float((fake8 == (labels == 1)).mean()))
    assert len(images) == 500 and z32.std() > 0.05  # a model whose logits depend on the image
    assert agreement >= MIN_AGREEMENT, agreement
    assert points <= MAX_ACCURACY_POINTS, points
    assert np.median(np.abs(z8 - z32)) <= MAX_MEDIAN_LOGIT_CHANGE * z32.std()
    assert not np.array_equal(z8, z32)  # it is a different (int8) computation, not the fp32 file again


def test_server_and_predict_load_the_int8_file(int8, tmp_path):
    path, _ = int8
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    from realfake.serve.app import create_app

    with TestClient(create_app(path, batch_wait_ms=0)) as client:
        r = client.post("/v1/predict", files=[("files", ("a.png", buf.getvalue(), "image/png"))])
        assert r.status_code == 200, r.text
        (row,) = r.json()
        assert 0.0 <= row["p_fake"] <= 1.0 and row["label"] in ("REAL", "FAKE", "uncertain")
    (tmp_path / "a.png").write_bytes(buf.getvalue())
    result = CliRunner().invoke(app, ["predict", str(path), str(tmp_path / "a.png")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["p_fake"] == pytest.approx(row["p_fake"], abs=1e-6)


def test_bad_quantize_value_and_missing_data_are_one_line_errors(quantize_run, tmp_path, mini_zip):
    runner = CliRunner()
    bad = runner.invoke(app, ["export", str(quantize_run), "--quantize", "int4"])
    assert bad.exit_code == 1 and bad.output.strip() == "error: --quantize must be int8; got 'int4'"
    lonely = runner.invoke(app, ["export", str(quantize_run), "--calibration-data", str(mini_zip)])
    assert lonely.exit_code == 1 and "need --quantize int8" in lonely.output

    moved = tmp_path / "moved"  # a run whose training data is no longer where its config says
    shutil.copytree(quantize_run, moved, ignore=shutil.ignore_patterns("*.onnx", "plots", "*.html"))
    config = (moved / "config.yaml").read_text()
    gone_zip = str(tmp_path / "gone.zip")  # the config may hold the path as given or resolved (../shared a link)
    config = config.replace(str(mini_zip.resolve()), gone_zip).replace(str(mini_zip), gone_zip)
    (moved / "config.yaml").write_text(config)
    gone = runner.invoke(app, ["export", str(moved), "--quantize", "int8"])
    assert gone.exit_code == 1 and len(gone.output.strip().splitlines()) == 1
    assert "gone.zip" in gone.output and "--calibration-data PATH" in gone.output
    assert not (moved / "model.int8.onnx").exists()
    for n in (0, 100_000):
        with pytest.raises(RealfakeError, match="--calibration-images must be 1 to"):
            export_onnx(moved, quantize="int8", calibration_images=n)


def test_calibration_data_takes_its_train_folder(mini_zip, quantize_run):
    cal = calibration_set(quantize_run, mini_zip, n=40)
    assert cal.images.shape == (40, 32, 32, 3) and cal.images.dtype == np.uint8
    assert cal.description == "40 images of standin-cifake-mini.zip (its train/ folder)"
    again = calibration_set(quantize_run, mini_zip, n=40)
    np.testing.assert_array_equal(cal.images, again.images)  # the same images every time: the same file
    own = calibration_set(quantize_run, n=1000)  # more than the run's training split holds: all of it
    assert len(own.images) == len(json.loads((quantize_run / "split.json").read_text())["train"])
