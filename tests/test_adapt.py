"""`realfake adapt`: a child run with a re-fitted calibration (and optionally a fine-tuned head); the parent
is never touched."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import zipfile
from html import unescape
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.clitools import assert_one_line_error, cli, cli_inline

from realfake.adapt import AdaptOptions, adapt, adapt_arrays
from realfake.calibration import Calibration, calibrate
from realfake.data.cache import load_dataset
from realfake.detector import Detector
from realfake.errors import RealfakeError
from realfake.models import read_state_dict
from realfake.report.summary import ADAPTED_ON, run_summary
from realfake.rundir import RunDir

CPU = AdaptOptions(device="cpu")


def _tree(mini_zip: Path, root: Path, n_real: int, n_fake: int) -> Path:
    """REAL/ and FAKE/ folders with the mini zip's first test images."""
    with zipfile.ZipFile(mini_zip) as zf:
        for label, n in (("REAL", n_real), ("FAKE", n_fake)):
            names = sorted(m for m in zf.namelist() if m.startswith(f"test/{label}/") and m.endswith(".jpg"))[:n]
            (root / label).mkdir(parents=True, exist_ok=True)
            for m in names:
                (root / label / Path(m).name).write_bytes(zf.read(m))
    return root


def _digests(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in run.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def new_set(mini_zip, tmp_path_factory):
    return _tree(mini_zip, tmp_path_factory.mktemp("newgen") / "newgen", 30, 30)


def test_adapt_writes_a_child_that_records_its_parent_and_loads(trained_run, new_set, tmp_path):
    before = _digests(trained_run)
    out = tmp_path / "child"
    child = adapt(trained_run, new_set, out, CPU, progress=False, log=lambda m: None)
    assert child == out
    assert _digests(trained_run) == before  # the parent is only read

    info = RunDir(child).info()
    parent_info = RunDir(trained_run).info()
    assert info["parent"]["path"] == str(trained_run.resolve())
    assert info["parent"]["threshold"] == parent_info["threshold"]
    assert info["adapted_on"]["per_class"] == {"REAL": 30, "FAKE": 30}
    assert info["adapted_on"]["finetuned"] is None and "threshold" in info["adapted_on"]["refit"]
    # Weights copied byte for byte; the calibration is the one fitted on the new set's logits.
    assert (child / RunDir.WEIGHTS).read_bytes() == (trained_run / RunDir.WEIGHTS).read_bytes()
    parent = Detector.load(trained_run, device="cpu")
    ds = load_dataset(new_set, progress=False)
    cfg = RunDir(trained_run).config()
    expected = calibrate(parent.predict_logits(ds.images), ds.labels, cfg.policy, cfg.uncertain,
                         parent.calibration.tta, cfg.ood_level)
    loaded = Detector.load(child, device="cpu")
    assert loaded.calibration == Calibration.from_info(expected.to_info())
    assert loaded.predict(ds.images[0]).label in ("REAL", "FAKE", "uncertain")

    with pytest.raises(RealfakeError, match="already exists"):
        adapt(trained_run, new_set, out, CPU, progress=False, log=lambda m: None)
    with pytest.raises(RealfakeError, match="parent run"):
        adapt(trained_run, new_set, trained_run / "inside", CPU, progress=False, log=lambda m: None)


def test_fake_logits_shifted_down_move_the_threshold_down(trained_run, mini_zip, tmp_path):
    """Two sets with the same REAL images, one with the FAKE images the parent scores highest, one with those it
    scores lowest (a generator it finds harder): the second's decision logit (the raw logit at which p_fake
    reaches the threshold, T * logit(threshold)) is lower."""
    ds = load_dataset(_tree(mini_zip, tmp_path / "pool", 40, 80), progress=False)
    parent = Detector.load(trained_run, device="cpu")
    z = parent.predict_logits(ds.images)
    real, fake = np.flatnonzero(ds.labels == 0), np.flatnonzero(ds.labels == 1)
    fake = fake[np.argsort(z[fake])]
    thresholds = []
    for name, pick in (("high", fake[-40:]), ("low", fake[:40])):
        idx = np.concatenate([real, pick])
        child = adapt_arrays(trained_run, ds.images[idx], ds.labels[idx], name, tmp_path / name, CPU,
                             log=lambda m: None)
        info = RunDir(child).info()
        assert "logit_offset" not in info  # the cut is on p_fake, which stays a probability
        thresholds.append(info["temperature"] * math.log(info["threshold"] / (1 - info["threshold"])))
    assert thresholds[1] < thresholds[0]


def test_finetune_head_changes_only_the_head(trained_run, new_set, tmp_path):
    torch.manual_seed(11)
    want = torch.rand(3)
    torch.manual_seed(11)
    child = adapt(trained_run, new_set, tmp_path / "tuned", AdaptOptions(finetune_head=True, epochs=2, device="cpu"),
                  progress=False, log=lambda m: None)
    assert torch.equal(torch.rand(3), want)  # its seed is the fine-tuning's own: the caller's random numbers are not
    before, after = read_state_dict(trained_run / RunDir.WEIGHTS), read_state_dict(child / RunDir.WEIGHTS)
    assert before.keys() == after.keys()
    changed = sorted(k for k in before if not np.array_equal(before[k].numpy(), after[k].numpy()))
    assert changed and all(k.startswith("head.") for k in changed)
    adapted_on = RunDir(child).info()["adapted_on"]
    assert adapted_on["finetuned"]["images"] == {"REAL": 15, "FAKE": 15}  # the other half calibrated
    assert adapted_on["calibration_images"] == {"REAL": 15, "FAKE": 15}
    Detector.load(child, device="cpu")
    # new weights, new logits: the parent's test figures are not the child's, and the report says so
    assert not (child / RunDir.METRICS).exists() and not (child / RunDir.PREDICTIONS).exists()
    card = (child / RunDir.MODEL_CARD).read_text()
    page = unescape((child / RunDir.REPORT).read_text())
    for text in (card, page):
        assert f"Adapted from run {trained_run.name} on newgen (60 labelled images): the model's head fine-tuned " \
               "for 2 epochs on 30 of them, then temperature, decision threshold and 'I don't know' (OOD) quantiles " \
               "re-fitted on the other 30." in text
        assert "Not measured on its test split since its head was fine-tuned" in text
        assert "realfake evaluate RUN" in text


def test_bad_sets_and_runs_are_one_line_errors(trained_run, mini_zip, tmp_path):
    one_class = _tree(mini_zip, tmp_path / "one", 0, 25)
    (one_class / "REAL").rmdir()
    assert_one_line_error(cli_inline("adapt", trained_run, "--data", one_class, "--out", tmp_path / "a"),
                          "only one class")
    few = _tree(mini_zip, tmp_path / "few", 6, 6)
    assert_one_line_error(cli_inline("adapt", trained_run, "--data", few, "--out", tmp_path / "b"), "too few images")
    assert_one_line_error(cli_inline("adapt", tmp_path / "no-run", "--data", few), "not a run directory")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_default_name_sits_beside_the_parent(trained_run, new_set, tmp_path):
    import shutil

    parent = tmp_path / "run"
    shutil.copytree(trained_run, parent)
    proc = cli("adapt", parent, "--data", new_set, "--device", "cpu")
    child = Path(proc.stdout.strip())
    assert child == tmp_path / "run-adapted-newgen"
    n = json.loads((child / RunDir.INFO).read_text())["adapted_on"]["n_images"]
    said = proc.stderr.strip().splitlines()[-1]
    assert said == f"wrote the adapted run, fitted on {n:,} images of {new_set}: {child}"
    assert json.loads((child / RunDir.INFO).read_text())["parent"]["name"] == "run"
    out = cli("predict", child, new_set / "REAL", "--decode-workers", "1").stdout.splitlines()
    assert len(out) == 30 and all("p_fake" in json.loads(line) for line in out)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_adapted_run_reports_where_it_comes_from_and_its_own_test_figures(trained_run, new_set, tmp_path):
    """report.html and MODEL_CARD.md at once, naming the parent, the set and what was re-fitted; the home figures
    are the parent's test-split logits under the child's calibration; an evaluation on the set is no test."""
    from realfake.evaluation import evaluate

    child = adapt(trained_run, new_set, tmp_path / "child", CPU, progress=False, log=lambda m: None)
    card = (child / RunDir.MODEL_CARD).read_text()
    page = unescape((child / RunDir.REPORT).read_text())
    for text in (card, page):
        assert f"Adapted from run {trained_run.name} on newgen (60 labelled images): temperature, decision " \
               "threshold and 'I don't know' (OOD) quantiles re-fitted on them; the weights are the parent's, " \
               "unchanged." in text
        assert str(trained_run.resolve()) in text and str(new_set) in text  # parent and set, by path too
        assert "its parent's test split (images like its training data" in text

    metrics = json.loads((child / RunDir.METRICS).read_text())
    assert metrics["rescored_from"]["run"] == trained_run.name
    parent_rows, rows = _rows(trained_run / RunDir.PREDICTIONS), _rows(child / RunDir.PREDICTIONS)
    assert [r["logit"] for r in rows] == [r["logit"] for r in parent_rows]  # the same weights: the same logits
    cal = Detector.load(child, device="cpu").calibration
    z = np.array([float(r["logit"]) for r in rows])
    y = np.array([int(r["label"]) for r in rows])
    verdicts = cal.labels(cal.p_fake(z), cal.ood_scores(z))
    assert [r["predicted"] for r in rows] == verdicts  # the child's own verdicts, as predict gives them
    assert metrics["labels"]["FAKE"]["counts"]["uncertain"] == sum(
        1 for v, t in zip(verdicts, y, strict=True) if t == 1 and v == "uncertain")
    assert metrics["n"] == len(rows) and metrics["threshold"] == cal.threshold

    evaluate(child, new_set, device="cpu", progress=False, log=lambda m: None)
    s = run_summary(child)
    assert s.measured == [] and [(m.name, m.kind) for m in s.fitted_on] == [("newgen", ADAPTED_ON)]
    assert "On newgen (adapted on these images, so not a test): of fakes" in s.text
    assert "Performance on generators it was not trained on is unknown" in s.text
    page = unescape((child / RunDir.REPORT).read_text())
    assert "adapted on (not a test)" in page and "On newgen (adapted on these images, so not a test)" in page
    assert "| newgen | adapted on (not a test) | 60 |" in (child / RunDir.MODEL_CARD).read_text()
    # /v1/model serves the same figures, the provenance as the same keys and values as before
    from fastapi.testclient import TestClient

    from realfake.serve.app import create_app

    figures = TestClient(create_app(child, device="cpu")).get("/v1/model").json()["summary_figures"]
    assert figures == {k: v for k, v in s.to_dict().items() if k != "text"}
    assert (figures["adapted_from"]["parent"], figures["adapted_from"]["refit"], figures["fitted_on"][0]["kind"]) == (
        trained_run.name, ["temperature", "threshold", "ood"], ADAPTED_ON)
