"""ONNX export: the file predicts what the PyTorch run predicts, describes itself, and takes any batch size."""

from __future__ import annotations

import json
import shutil
from datetime import datetime

import numpy as np
import onnx
import pytest
from PIL import Image
from typer.testing import CliRunner

from realfake.cli import app
from realfake.data.cache import load_dataset
from realfake.detector import Detector
from realfake.errors import RealfakeError
from realfake.export import export_onnx
from realfake.onnxfile import OnnxBackend

# not the defaults, so that parity and the round trip prove they were carried into the file
THRESHOLD, TEMPERATURE, TTA, BAND = 0.37, 1.7, "flip", [0.3, 0.32]


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """A copy of the trained run with calibration and test-time flips in run.json, exported once to RUN/model.onnx."""
    run = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(trained_run, run)
    info = json.loads((run / "run.json").read_text())
    info.update(threshold=THRESHOLD, temperature=TEMPERATURE, tta=TTA, uncertain_band=BAND)
    (run / "run.json").write_text(json.dumps(info))
    path = export_onnx(run)
    return run, path


@pytest.fixture(scope="module")
def torch_det(exported):
    """The run in fp32, as the file computes: on a CPU with native bf16 the run's own `auto` would be bf16."""
    return Detector.load(exported[0], device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def onnx_det(exported):
    return Detector.load(exported[1])


def test_export_writes_run_model_onnx_atomically(exported):
    run, path = exported
    assert path == run / "model.onnx" and path.stat().st_size > 1_000_000
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_parity_with_pytorch_on_real_images(mini_zip, torch_det, onnx_det):
    images = np.asarray(load_dataset(mini_zip, limit=100, seed=1, progress=False).images)
    assert images.shape == (100, 32, 32, 3) and images.dtype == np.uint8
    p_torch, p_onnx = torch_det.predict_proba(images), onnx_det.predict_proba(images)
    assert p_onnx.shape == (100,) and np.isfinite(p_onnx).all()
    assert np.abs(p_torch - p_onnx).max() <= 1e-4
    assert np.abs(torch_det.predict_logits(images) - onnx_det.predict_logits(images)).max() <= 1e-3
    # test-time flips and the temperature are inside the graph: p_fake = sigmoid(mean logit / T), a probability
    logits = onnx_det.predict_logits(images)
    np.testing.assert_allclose(p_onnx, 1 / (1 + np.exp(-logits / TEMPERATURE)), atol=1e-6)


def test_dynamic_batch_of_one_and_seven(onnx_det, torch_det):
    rng = np.random.default_rng(0)
    seven = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    (inp,) = onnx_det.backend.session.get_inputs()
    assert inp.name == "images" and inp.type == "tensor(uint8)" and inp.shape[1:] == [32, 32, 3]
    assert not isinstance(inp.shape[0], int)  # symbolic: any batch size
    one = onnx_det.backend.session.run(["p_fake"], {"images": seven[:1]})[0]
    all7 = onnx_det.backend.session.run(["p_fake"], {"images": seven})[0]
    assert one.shape == (1,) and all7.shape == (7,)
    np.testing.assert_allclose(one, all7[:1], atol=1e-6)
    # batches smaller than the data set (7 images in 3 calls) give the same answers as one call
    np.testing.assert_allclose(onnx_det.predict_proba(seven, batch_size=3), all7, atol=1e-6)
    assert np.abs(onnx_det.predict_proba(seven) - torch_det.predict_proba(seven)).max() <= 1e-4


def test_metadata_round_trip(exported, onnx_det):
    props = {p.key: p.value for p in onnx.load(str(exported[1]), load_external_data=False).metadata_props}
    assert float(props["threshold"]) == THRESHOLD
    assert json.loads(props["class_names"]) == ["REAL", "FAKE"]
    assert props["model"] == "seed-resnet50"
    assert props["realfake_version"]
    assert "uint8" in props["input"] and "[N, 32, 32, 3]" in props["input"] and "NHWC" in props["input"]
    assert datetime.fromisoformat(props["created"]).tzinfo is not None
    assert isinstance(onnx_det.backend, OnnxBackend) and onnx_det.backend.name == "onnxruntime"
    assert onnx_det.threshold == THRESHOLD
    assert "logit_offset" not in props  # the threshold is a cut on p_fake, nothing folded into p
    assert onnx_det.info["class_names"] == ["REAL", "FAKE"] and onnx_det.info["model"] == "seed-resnet50"
    assert onnx_det.info["uncertain_band"] == BAND and onnx_det.info["tta"] == TTA
    assert onnx_det.label_for(0.31) == "uncertain" and onnx_det.label_for(0.9) == "FAKE"


def test_onnx_detector_predicts_like_the_run(tmp_path, torch_det, onnx_det):
    img = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    a, b = torch_det.predict([tmp_path / "a.png", tmp_path / "bad.jpg"])
    c, d = onnx_det.predict([tmp_path / "a.png", tmp_path / "bad.jpg"])
    assert abs(a.p_fake - c.p_fake) <= 1e-4 and a.label == c.label and c.threshold == THRESHOLD
    assert d.p_fake is None and d.error == b.error


def test_cli_export_and_predict_with_onnxruntime(exported, tmp_path):
    run, _ = exported
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(tmp_path / "x.png")
    runner = CliRunner()
    out_file = tmp_path / "elsewhere" / "det.onnx"
    result = runner.invoke(app, ["export", str(run), "--format", "onnx", "--out", str(out_file)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out_file) and out_file.is_file()
    size = f"{out_file.stat().st_size / 1e6:.1f} MB"
    assert result.stderr.strip().splitlines()[-1] == f"wrote the ONNX model, one file of {size}: {out_file}"

    by_run = runner.invoke(app, ["predict", str(run), str(tmp_path / "x.png"), "--backend", "onnxruntime"])
    by_file = runner.invoke(app, ["predict", str(out_file), str(tmp_path / "x.png")])
    by_torch = runner.invoke(app, ["predict", str(run), str(tmp_path / "x.png"), "--device", "cpu"])
    lines = [json.loads(r.stdout) for r in (by_run, by_file, by_torch)]
    assert all(r.exit_code == 0 for r in (by_run, by_file, by_torch))
    assert lines[0] == lines[1]
    assert abs(lines[0]["p_fake"] - lines[2]["p_fake"]) <= 1e-4 and lines[0]["threshold"] == THRESHOLD

    bad_format = runner.invoke(app, ["export", str(run), "--format", "tflite"])
    assert bad_format.exit_code == 1 and "--format must be" in bad_format.output


def test_missing_or_broken_onnx_gives_one_line_errors(trained_run, tmp_path):
    with pytest.raises(RealfakeError, match="realfake export"):
        Detector.load(trained_run, backend="onnxruntime")  # the shared run was never exported
    (tmp_path / "broken.onnx").write_bytes(b"\x00 not a protobuf")
    with pytest.raises(RealfakeError, match="cannot load"):
        Detector.load(tmp_path / "broken.onnx")
    with pytest.raises(RealfakeError, match="not found"):
        Detector.load(tmp_path / "missing.onnx")
    result = CliRunner().invoke(app, ["predict", str(trained_run), str(tmp_path), "--backend", "onnxruntime"])
    assert result.exit_code == 1 and "realfake export" in result.output
    with pytest.raises(RealfakeError, match="not a trained run"):
        export_onnx(tmp_path)


def test_ood_output_matches_the_detector(mini_zip, exported, torch_det, onnx_det):
    """The graph's `ood` is the Detector's score (same quantiles, same threshold side), and the file carries
    the quantiles so that an ONNX-loaded Detector labels 'uncertain' like the run."""
    assert torch_det.calibration.ood is not None  # the trained run fitted one on its validation split
    images = np.asarray(load_dataset(mini_zip, limit=100, seed=2, progress=False).images)
    ood_graph = onnx_det.backend.session.run(["ood"], {"images": images})[0]
    z = torch_det.predict_logits(images)
    np.testing.assert_allclose(ood_graph, torch_det.calibration.ood_scores(z), atol=2e-3)
    assert onnx_det.calibration.ood == torch_det.calibration.ood
    names = [f"i{k}" for k in range(len(images))]
    a = torch_det.predictions(names, list(images), [None] * len(images))
    b = onnx_det.predictions(names, list(images), [None] * len(images))
    assert [p.label for p in a] == [p.label for p in b] and all(p.ood is not None for p in b)
    assert max(abs(p.ood - q.ood) for p, q in zip(a, b, strict=True)) <= 2e-3
