"""End to end through the real command: train, evaluate, predict, report, and the one-line errors."""

import json

import pytest
from PIL import Image
from tests.clitools import assert_one_line_error, cli, cli_inline
from typer.testing import CliRunner

from realfake.cli import app

METRIC_KEYS = {"accuracy", "precision", "recall", "f1", "roc_auc", "average_precision", "confusion_matrix", "n",
               "threshold"}






@pytest.fixture(scope="module")
def trained(mini_zip, tmp_path_factory):
    import os

    os.environ.setdefault("REALFAKE_CACHE_DIR", str(tmp_path_factory.mktemp("cli-cache")))
    run_dir = tmp_path_factory.mktemp("runs") / "e2e"
    proc = cli("train", "--data", mini_zip, "--protocol", "official", "--limit", 300, "--epochs", 2,
               "--batch-size", 32, "--weights", "none", "--device", "cpu", "--out", run_dir)
    assert proc.stdout.strip().endswith("report.html")
    return run_dir


def test_train_writes_a_complete_run(trained):
    for name in ["config.yaml", "split.json", "data_report.json", "model.safetensors", "history.csv", "metrics.json",
                 "report.html", "run.json", "predictions.csv", "checkpoint/state.json", "plots/confusion_matrix.png",
                 "plots/roc_curve.png", "plots/pr_curve.png", "plots/training_curves.png",
                 "plots/predictions_grid.png"]:
        assert (trained / name).is_file(), name
    assert any((trained / "tb").iterdir()), "no TensorBoard event file"
    metrics = json.loads((trained / "metrics.json").read_text())
    assert set(metrics) >= METRIC_KEYS
    split = json.loads((trained / "split.json").read_text())
    report = json.loads((trained / "data_report.json").read_text())
    # official protocol: the test split is the test/ folder of the 300-image stratified subset (60 of 300)
    assert split["protocol"] == "official" and len(split["test"]) == metrics["n"] == 60
    assert report["split"]["test"] == {"n": 60, "REAL": 30, "FAKE": 30}
    assert len((trained / "history.csv").read_text().strip().splitlines()) == 3
    assert "weights_used" in json.loads((trained / "run.json").read_text())


def test_evaluate_reproduces_the_saved_metrics(trained):
    saved = json.loads((trained / "metrics.json").read_text())
    again = json.loads(cli("evaluate", trained, "--device", "cpu").stdout)
    assert again["accuracy"] == saved["accuracy"] and again["confusion_matrix"] == saved["confusion_matrix"]


def test_evaluate_on_other_data(trained, tmp_path):
    for cls, color in [("REAL", (200, 30, 30)), ("FAKE", (30, 30, 200))]:
        (tmp_path / "other" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (48, 40), color).save(tmp_path / "other" / cls / f"{i}.png")
    metrics = json.loads(cli("evaluate", trained, "--data", tmp_path / "other", "--device", "cpu").stdout)
    assert metrics["n"] == 6 and sum(map(sum, metrics["confusion_matrix"])) == 6
    assert (trained / "evaluations" / "other" / "metrics.json").is_file()


def test_predict_files_folders_and_bad_files(trained, tmp_path):
    Image.new("RGB", (32, 32), (10, 200, 10)).save(tmp_path / "a.png")
    (tmp_path / "d" / "sub").mkdir(parents=True)
    Image.new("L", (100, 60), 128).save(tmp_path / "d" / "sub" / "b.jpg")
    (tmp_path / "d" / "notes.txt").write_text("not an image, not an image suffix: skipped in folders")
    (tmp_path / "bad.jpg").write_bytes(b"")
    proc = cli("predict", trained, tmp_path / "a.png", tmp_path / "d", tmp_path / "bad.jpg", "--device", "cpu")
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["path"].rsplit("/", 1)[-1] for line in lines] == ["a.png", "b.jpg", "bad.jpg"]
    level = json.loads((trained / "run.json").read_text())["ood"]["level"]
    for line in lines[:2]:
        want = "FAKE" if line["p_fake"] >= line["threshold"] else "REAL"  # the run's stored threshold
        want = "uncertain" if line["ood"] > level else want  # ... unless out of distribution
        assert 0 <= line["p_fake"] <= 1 and 0 <= line["ood"] <= 1 and line["label"] == want
    assert lines[2]["p_fake"] is None and "empty" in lines[2]["error"]

    forced = cli("predict", trained, tmp_path / "a.png", "--threshold", "0.999999", "--device", "cpu")
    assert json.loads(forced.stdout)["threshold"] == 0.999999

    nothing = cli("predict", trained, tmp_path / "bad.jpg", check=False)
    assert_one_line_error(nothing, "no readable image")
    assert json.loads(nothing.stdout)["error"]


def test_predict_zip_glob_and_csv(trained, tmp_path):
    import csv
    import io
    import zipfile

    Image.new("RGB", (32, 32), (10, 200, 10)).save(tmp_path / "a.png")
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "b.png")
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as zf:
        zf.write(tmp_path / "a.png", "x/a.png")
        zf.writestr("x/bad.png", b"nope")
    proc = cli("predict", trained, str(tmp_path / "*.png"), tmp_path / "z.zip", "--format", "csv", "--device", "cpu")
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    names = [r["path"].replace(f"{tmp_path}/", "") for r in rows]
    assert names == ["a.png", "b.png", "z.zip::x/a.png", "z.zip::x/bad.png"]
    assert rows[0]["p_fake"] == rows[2]["p_fake"] != "" and rows[0]["ood"] == rows[2]["ood"] != ""
    assert rows[3]["p_fake"] == "" and rows[3]["error"] == "not an image"
    assert_one_line_error(cli("predict", trained, tmp_path / "a.png", "--format", "xml", check=False), "--format")


def test_report_redraws(trained):
    (trained / "report.html").unlink()
    (trained / "plots" / "roc_curve.png").unlink()
    cli("report", trained)
    assert (trained / "report.html").stat().st_size > 10_000 and (trained / "plots" / "roc_curve.png").is_file()


def test_user_errors_are_one_line(tmp_path, mini_zip):
    only, mixed = tmp_path / "only", tmp_path / "mixed"
    for folder in (only, mixed):
        (folder / "REAL").mkdir(parents=True)
        (folder / "FAKE").mkdir()
        Image.new("RGB", (32, 32)).save(folder / "REAL" / "x.png")
        (folder / "FAKE" / "broken.png").write_bytes(b"garbage")
    Image.new("RGB", (32, 32), (9, 9, 9)).save(mixed / "FAKE" / "y.png")
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("epochz: 3\n")
    cases = [
        (("train", "--data", tmp_path / "missing"), "error: data not found"),
        (("train", "--data", only), "only one class"),
        (("train", "--data", mixed, "--protocol", "official"), "--protocol"),
        (("evaluate", tmp_path), "not a trained run"),
        (("train", "--epochs", "0"), "epochs"),
        (("train", "--config", bad_cfg), "epochz"),
    ]
    for args, text in cases:
        assert_one_line_error(cli_inline(*args), text)
    assert_one_line_error(cli(*cases[0][0], check=False), cases[0][1])  # and through the real entry point


def test_config_file_and_flags_merge(tmp_path, mini_zip):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {mini_zip}\nlimit: 120\nepochs: 5\nbatch-size: 32\nweights: none\ndevice: cpu\n")
    out = tmp_path / "run"
    cli("train", "--config", cfg, "--epochs", 1, "--out", out)
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["limit"] == 120 and saved["batch_size"] == 32


def test_download_failure_is_explained(monkeypatch):
    import kagglehub

    def offline(handle):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    result = CliRunner().invoke(app, ["download"])
    assert result.exit_code == 1
    assert "could not download CIFAKE" in result.output and "--data" in result.output


@pytest.mark.parametrize(("command", "sleeps"), [("predict", True), ("serve", True), ("train", False)])
def test_predict_and_serve_let_the_models_threads_sleep_and_training_does_not(monkeypatch, tmp_path, command, sleeps):
    import os

    monkeypatch.setenv("OMP_WAIT_POLICY", "recorded")  # so that monkeypatch restores the variable afterwards
    monkeypatch.delenv("OMP_WAIT_POLICY")
    args = {"predict": ["predict", tmp_path / "no-run", tmp_path / "x.jpg"], "serve": ["serve", tmp_path / "no-run"],
            "train": ["train", "--data", tmp_path / "missing.zip", "--epochs", 0]}[command]
    assert cli_inline(*args).returncode != 0  # each fails early, after choosing its policy
    assert os.environ.get("OMP_WAIT_POLICY") == ("PASSIVE" if sleeps else None)
