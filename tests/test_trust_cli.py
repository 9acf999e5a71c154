"""The trust features through the real command: calibration and threshold policies at training time, the
uncertainty band, evaluation per source on another data set, the robustness command and their errors."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from tests.clitools import assert_one_line_error, cli, cli_inline

TINY = ["--limit", 120, "--epochs", 1, "--batch-size", 32, "--weights", "none", "--device", "cpu"]






@pytest.fixture(scope="module")
def fpr_run(mini_zip, tmp_path_factory):
    """A tiny run trained with a false-positive-rate policy, an uncertainty band and flip TTA."""
    import os

    os.environ.setdefault("REALFAKE_CACHE_DIR", str(tmp_path_factory.mktemp("trust-cache")))
    out = tmp_path_factory.mktemp("trust") / "run"
    cli("train", "--data", mini_zip, *TINY, "--threshold-policy", "fpr:0.2", "--uncertain", "0.35:0.65",
        "--tta", "flip", "--out", out)
    return out


def test_training_stores_calibration_and_reports_it(fpr_run):
    info = json.loads((fpr_run / "run.json").read_text())
    assert info["threshold_policy"] == "fpr:0.2" and info["uncertain_band"] == [0.35, 0.65]
    assert info["tta"] == "flip" and info["temperature"] > 0
    metrics = json.loads((fpr_run / "metrics.json").read_text())
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "average_precision", "confusion_matrix", "n",
                "threshold", "per_class", "ece", "brier", "ece_uncalibrated", "brier_uncalibrated", "temperature"):
        assert key in metrics, key
    assert metrics["threshold"] == info["threshold"] and metrics["temperature"] == info["temperature"]
    assert metrics["tta"] == "flip"
    u = metrics["uncertain"]
    assert u["n_uncertain"] + u["n_decided"] == metrics["n"]
    predicted = [line.split(",")[4] for line in (fpr_run / "predictions.csv").read_text().splitlines()[1:]]
    assert predicted.count("uncertain") == u["n_uncertain"]
    assert (fpr_run / "plots" / "reliability_diagram.png").is_file()
    html = (fpr_run / "report.html").read_text()
    assert "Reliability diagram" in html or "reliability_diagram" in html
    assert "Uncertainty band" in html


def test_the_fpr_target_holds_on_validation_and_the_detector_uses_the_calibration(fpr_run):
    from realfake.calibration import apply_temperature
    from realfake.config import RunConfig, load_yaml
    from realfake.data.cache import load_dataset
    from realfake.data.splits import split_from_json
    from realfake.detector import Detector
    from realfake.infer import predict_logits

    cfg = RunConfig(**load_yaml(fpr_run / "config.yaml"))
    ds = load_dataset(cfg.data, cfg.limit, cfg.seed, progress=False)
    val = split_from_json(json.loads((fpr_run / "split.json").read_text()), len(ds))["val"]
    det = Detector.load(fpr_run, device="cpu")
    images = np.asarray(ds.images[val])
    p = det.predict_proba(images)
    real = ds.labels[val] == 0
    assert np.mean(p[real] >= det.threshold) <= 0.2
    # the detector's p is the calibrated, flip-averaged probability; the policy's cut is applied to it, not in it
    z = predict_logits(det.model, images, det.device, tta="flip")
    info = json.loads((fpr_run / "run.json").read_text())
    assert "logit_offset" not in info and info["threshold"] == det.threshold
    assert np.allclose(p, apply_temperature(z, info["temperature"]), atol=1e-4)
    assert det.label_for(0.5) == "uncertain"  # the band is on the probability
    for q in (0.01, 0.99):
        assert det.label_for(q) == ("FAKE" if q >= det.threshold else "REAL")


def test_evaluate_recomputes_with_the_stored_calibration(fpr_run):
    saved = json.loads((fpr_run / "metrics.json").read_text())
    again = json.loads(cli("evaluate", fpr_run, "--device", "cpu").stdout)
    for key in ("accuracy", "confusion_matrix", "threshold", "temperature", "ece", "brier", "uncertain"):
        assert again[key] == saved[key], key


def _sources_tree(root):
    rng = np.random.default_rng(0)
    for folder in ("FAKE/genA", "FAKE/genB", "REAL/x"):
        (root / folder).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / folder / f"{i}.png")
    return root


def test_evaluate_on_other_data_reports_per_source_and_unseen_sources(fpr_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fpr_run, run)
    other = _sources_tree(tmp_path / "other")
    metrics = json.loads(cli("evaluate", run, "--data", other, "--device", "cpu").stdout)
    assert metrics["n"] == 12
    per = metrics["per_source"]
    assert set(per) == {"genA", "genB", "x"}
    assert per["genA"]["n"] == per["genB"]["n"] == per["x"]["n"] == 4
    assert per["genA"]["classes"] == ["FAKE"] and per["x"]["classes"] == ["REAL"]
    assert per["genA"]["roc_auc"] is None and per["genA"]["roc_auc_vs_other_class"] is not None
    # per-source accuracy of a one-class source is that class's recall
    assert per["x"]["accuracy"] == pytest.approx(per["x"]["confusion_matrix"][0][0] / 4)
    assert metrics["sources_unseen_in_training"] == ["genA", "genB", "x"]  # the mini zip has no sources
    saved = json.loads((run / "evaluations" / "other" / "metrics.json").read_text())
    assert saved["per_source"] == per
    html = (run / "report.html").read_text()
    assert "Never seen in training" in html and "genB" in html


def test_robustness_command_on_a_copy_of_the_trained_run(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    proc = cli("robustness", run, "--device", "cpu")
    assert "jpeg75/FAKE-only" in proc.stdout and "clean" in proc.stdout
    result = json.loads((run / "robustness.json").read_text())
    names = [r["condition"] for r in result["conditions"]]
    assert len(names) == 37 and names[0] == "clean" and "noise10/REAL-only" in names
    for r in result["conditions"]:
        assert {"accuracy", "roc_auc", "ece"} <= set(r)
    assert result["n"] == json.loads((run / "metrics.json").read_text())["n"]
    assert result["conditions"][0]["accuracy"] == json.loads((run / "metrics.json").read_text())["accuracy"]
    assert (run / "plots" / "robustness.png").is_file()
    assert "jpeg75/REAL-only" in (run / "report.html").read_text()


def test_robustness_on_other_data_writes_beside_the_evaluation(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    other = _sources_tree(tmp_path / "set")
    cli("robustness", run, "--data", other, "--device", "cpu")
    result = json.loads((run / "evaluations" / "set" / "robustness.json").read_text())
    assert result["n"] == 12 and result["split"] == "all"
    assert set(result["conditions"][0]["per_source"]) == {"genA", "genB", "x"}
    assert not (run / "robustness.json").exists()


def test_trust_options_fail_in_one_line(mini_zip, tmp_path):
    assert_one_line_error(cli_inline("train", "--data", mini_zip, *TINY, "--threshold-policy", "fpr:2"),
                          "threshold policy")
    assert_one_line_error(cli_inline("train", "--data", mini_zip, *TINY, "--uncertain", "0.8:0.2"),
                          "uncertainty band")
    assert_one_line_error(cli_inline("train", "--data", mini_zip, *TINY, "--augment", "heavy"), "augment")
    assert_one_line_error(cli_inline("robustness", tmp_path), "not a trained run")


def test_fixed_policy_keeps_the_notebook_threshold_with_robust_augmentation(mini_zip, tmp_path):
    out = tmp_path / "fixed"
    cli("train", "--data", mini_zip, *TINY, "--threshold-policy", "fixed:0.5", "--augment", "robust", "--out", out)
    info = json.loads((out / "run.json").read_text())
    assert info["threshold"] == 0.5 and info["threshold_policy"] == "fixed:0.5"
    assert json.loads((out / "metrics.json").read_text())["threshold"] == 0.5
    assert "augment: robust" in (out / "config.yaml").read_text()


@pytest.mark.slow
def test_holdout_protocol_trains_without_the_source_and_reports_it(tmp_path):
    data = tmp_path / "data"
    rng = np.random.default_rng(1)
    for folder, n in (("REAL/x", 60), ("FAKE/genA", 40), ("FAKE/genB", 20)):
        (data / folder).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(data / folder / f"{i}.png")
    run = tmp_path / "run"
    cli("train", "--data", data, "--protocol", "holdout:genB", "--model", "fast", "--epochs", "1", "--device", "cpu",
        "--out", run)
    report = json.loads((run / "data_report.json").read_text())
    assert "genB" not in report["split_sources"]["train"] and "genB" not in report["split_sources"]["val"]
    assert report["split_sources"]["test"]["genB"] == 20
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["per_source"]["genB"]["n"] == 20 and metrics["per_source"]["genB"]["classes"] == ["FAKE"]
    # what "I don't know" did for the held-out source: its uncertain and confidently wrong shares, consistent
    held = metrics["per_source"]["genB"]
    assert 0 <= held["fraction_uncertain"] <= 1 and held["confidently_wrong"] <= 1 - held["accuracy"] + 1e-9
    assert "genB" in (run / "report.html").read_text() and "holdout:genB" in (run / "MODEL_CARD.md").read_text()
