"""The run report: figures are real PNGs, the page embeds them, escapes file content and makes no outside requests."""

from __future__ import annotations

import csv
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from realfake.errors import RealfakeError
from realfake.report import plots
from realfake.report.html import build_report, write_report

ALL_PLOTS = {"training_curves", "confusion_matrix", "roc_curve", "pr_curve", "predictions_grid"}
EVIL = "<script>alert('x')</script>"
VOID = {"meta", "img", "br", "hr", "link", "input"}


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def make_run(run_dir: Path, labels: list[int], n_epochs: int = 3) -> Path:
    """A run folder with every file a finished run leaves, filled by hand."""
    rng = np.random.default_rng(0)
    run_dir.mkdir(parents=True)
    y = np.array(labels)
    p = np.clip(0.7 * y + 0.3 * rng.random(len(y)), 0, 1)
    pred = (p >= 0.5).astype(int)
    cm = [[int(((y == t) & (pred == q)).sum()) for q in (0, 1)] for t in (0, 1)]
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "train_accuracy": 0.6 + 0.1 * e,
            "val_loss": 1.2 / e,
            "val_accuracy": 0.55 + 0.1 * e,
            "lr": 1e-3,
            "seconds": 2.5,
        }
        for e in range(1, n_epochs + 1)
    ]
    _write_csv(run_dir / "history.csv", history)
    _write_csv(
        run_dir / "predictions.csv",
        [
            {"path": f"img{i}.png", "label": int(t), "p_fake": float(q)}
            for i, (t, q) in enumerate(zip(y, p, strict=True))
        ],
    )
    metrics = {
        "accuracy": 0.912345,
        "precision": 0.9,
        "recall": 0.925,
        "f1": 0.9124,
        "roc_auc": 0.97 if len(set(labels)) == 2 else None,
        "average_precision": 0.96 if len(set(labels)) == 2 else None,
        "confusion_matrix": cm,
        "n": len(y),
        "threshold": 0.5,
        "per_class": {
            "REAL": {"precision": 0.92, "recall": 0.9, "f1": 0.91, "support": cm[0][0] + cm[0][1]},
            "FAKE": {"precision": 0.9, "recall": 0.925, "f1": 0.9124, "support": cm[1][0] + cm[1][1]},
        },
        "ece": 0.0421,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    k = 8
    np.savez(
        run_dir / "samples.npz", images=rng.integers(0, 256, (k, 32, 32, 3), dtype=np.uint8), labels=y[:k], p_fake=p[:k]
    )
    (run_dir / "config.yaml").write_text("model: seed-resnet50\nepochs: 3\nnote: <b>bold</b>\n")
    (run_dir / "data_report.json").write_text(
        json.dumps(
            {
                "data": "cifake-mini.zip",
                "n_images": len(y),
                "per_class": {"REAL": 20, "FAKE": 20},
                "per_split_folder": {"train": {"REAL": 10, "FAKE": 10}, "test": {"REAL": 10, "FAKE": 10}},
                "sources": {"cifake-mini.zip": len(y)},
                "n_skipped": 25,
                "skipped": [{"path": f"bad/{EVIL}.png", "reason": "not an image"}]
                + [{"path": f"bad/{i}.png", "reason": "truncated"} for i in range(24)],
            }
        )
    )
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "model": "seed-resnet50",
                "weights_used": "none",
                "created": "2024-01-01T00:00:00",
                "device": "cpu",
                "best_epoch": 2,
                "stopped_early": False,
                "train_seconds": 7.5,
            }
        )
    )
    return run_dir


class _WellFormed(HTMLParser):
    """Every non-void tag closed in order: enough to catch a broken template."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def _assert_png(path: Path) -> None:
    assert path.is_file()
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        assert im.width >= 200 and im.height >= 200
        assert len(np.unique(np.asarray(im.convert("L")))) > 2  # something was drawn


def test_full_report(tmp_path: Path) -> None:
    labels = [0, 1] * 20
    run_dir = make_run(tmp_path / "run-abc", labels)
    report = build_report(run_dir)

    assert report == run_dir / "report.html"
    written = sorted((run_dir / "plots").glob("*.png"))
    assert {p.stem for p in written} == {
        "training_curves",
        "confusion_matrix",
        "roc_curve",
        "pr_curve",
        "predictions_grid",
    }
    for png in written:
        _assert_png(png)

    page = report.read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == len(ALL_PLOTS)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "0.9123" in page  # accuracy, formatted to 4 decimals
    assert "0.0421" in page  # an extra numeric key (ece) shows without code changes
    assert "run-abc" in page and "seed-resnet50" in page
    assert EVIL not in page and "&lt;script&gt;" in page
    assert "<b>bold</b>" not in page  # config.yaml is escaped too
    assert "bad/19.png" not in page and "bad/18.png" in page  # first 20 skipped only
    assert "other generators" in page
    parser = _WellFormed()
    parser.feed(page)
    assert parser.errors == [] and parser.stack == []


def test_single_class_skips_roc_and_pr(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run-one", [1] * 12)
    labels, p_fake = plots.read_predictions(run_dir / "predictions.csv")
    assert plots.roc_curve(labels, p_fake, tmp_path / "roc.png") is None
    assert plots.pr_curve(labels, p_fake, tmp_path / "pr.png") is None
    assert not (tmp_path / "roc.png").exists()

    drawn = plots.draw_all(run_dir)
    assert set(drawn) == ALL_PLOTS - {"roc_curve", "pr_curve"}
    page = build_report(run_dir).read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == len(drawn)
    assert "n/a" in page  # null ROC AUC / AP


def test_stale_plots_are_removed(tmp_path: Path) -> None:
    """A figure left by an earlier draw must not outlive its input."""
    run_dir = make_run(tmp_path / "run", [0, 1] * 10)
    plots.draw_all(run_dir)
    (run_dir / "predictions.csv").unlink()
    assert "roc_curve" not in plots.draw_all(run_dir)
    assert not (run_dir / "plots" / "roc_curve.png").exists()


def test_sparse_run_still_reports(tmp_path: Path) -> None:
    """A run stopped early has maybe one epoch and nothing else; the page says what is missing."""
    run_dir = tmp_path / "bare"
    run_dir.mkdir()
    _write_csv(
        run_dir / "history.csv",
        [
            {
                "epoch": 1,
                "train_loss": 0.7,
                "train_accuracy": 0.5,
                "val_loss": 0.69,
                "val_accuracy": "",
                "lr": 1e-3,
                "seconds": 1,
            }
        ],
    )
    page = build_report(run_dir).read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 1
    assert "No metrics.json" in page and "No config.yaml" in page
    assert write_report(run_dir, {}).read_text(encoding="utf-8").count("data:image/png") == 0


def test_empty_history_and_grid_edge_cases(tmp_path: Path) -> None:
    assert plots.training_curves([], tmp_path / "t.png") is None
    imgs = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    out = plots.prediction_grid(imgs, [0, 1, 1], [0.2, 0.9, 0.1], 0.5, tmp_path / "g.png")
    assert out is not None and out.is_file()
    with pytest.raises(RealfakeError, match="disagree"):
        plots.prediction_grid(imgs, [0, 1], [0.2, 0.9], 0.5, tmp_path / "bad.png")


def test_summary_opens_the_report_and_other_data_comes_first(tmp_path: Path) -> None:
    """The summary line sits above every table; measured other data is right under the test metrics, labelled."""
    run_dir = make_run(tmp_path / "run", [0, 1] * 10)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["ood"] = {"level": 0.95, "n_flagged": 3, "fraction_flagged": 0.15, "fraction_flagged_real": 0.1,
                      "fraction_flagged_fake": 0.2, "fraction_uncertain": 0.15, "confidently_wrong": 0.05,
                      "accuracy_decided": 0.94}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    ev = run_dir / "evaluations" / "ganC-fake.zip"
    ev.mkdir(parents=True)
    (ev / "metrics.json").write_text(json.dumps({
        "accuracy": 0.792, "n": 4000, "roc_auc": 0.998, "confusion_matrix": [[1998, 2], [830, 1170]],
        "ood": {"level": 0.95, "n_flagged": 1234, "fraction_flagged": 0.3085, "confidently_wrong": 0.031}}))
    (ev / "data_report.json").write_text(json.dumps({"data": "/data/ganC-fake.zip"}))
    page = write_report(run_dir, {}).read_text(encoding="utf-8")
    summary = page.index('class="summary"')
    assert summary < page.index("<h2>Test metrics</h2>") < page.index("<h2>Other data")
    assert page.index("<h2>Other data") < page.index("<h2>Figures</h2>")
    assert "on other data it was measured on: ganC-fake 79.2% (41.5% of fakes called REAL" in page
    assert "<th>fakes called REAL</th>" in page and "<th>ganC-fake</th>" in page  # people's labels, not keys
    assert "1234 (30.9%)" in page and "3 (15.0%)" in page  # OOD flags: other data and the test split
    assert "out of distribution</strong>" in page and "above 0.95" in page  # what uncertain means
    parser = _WellFormed()
    parser.feed(page)
    assert parser.errors == [] and parser.stack == []


def test_old_run_without_ood_renders_and_says_unknown(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "old", [0, 1] * 10)  # metrics.json and run.json from before the OOD score
    page = write_report(run_dir, {}).read_text(encoding="utf-8")
    assert "Performance on generators it was not trained on is unknown" in page
    assert "<code>realfake evaluate RUN --data OTHER</code>" in page
    assert "Out of distribution" not in page and "confidently wrong" not in page
