"""The run's figures as PNG files: learning curves, confusion matrix, ROC and PR curves, a prediction grid.

Figures are built with matplotlib's object API (`Figure`, never pyplot): no display, no global backend
switch and no pyplot figure registry, so drawing is safe inside a notebook, a CLI or a server thread.
Each PNG is rendered in memory and written atomically, so a reader never sees half an image.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics as skm

from realfake.atomic import atomic_write_bytes, remove_stale_temporaries
from realfake.calibration import Calibration, is_fake, sigmoid
from realfake.contract import CLASS_NAMES
from realfake.errors import RealfakeError
from realfake.metrics import ece, ece_equal_mass, equal_mass_bins, reliability_bins
from realfake.rundir import RunDir

PLOT_FILES = {
    "training_curves": "training_curves.png",
    "confusion_matrix": "confusion_matrix.png",
    "roc_curve": "roc_curve.png",
    "pr_curve": "pr_curve.png",
    "predictions_grid": "predictions_grid.png",
    "reliability_diagram": "reliability_diagram.png",
    "robustness": "robustness.png",
}
MAX_GRID_IMAGES = 64  # beyond this the thumbnails get too small to read
_RIGHT, _WRONG = "#1a7f37", "#cf222e"
_DPI = 110


def _save(fig: Figure, out: Path) -> Path:
    """Render in memory, then swap the file in whole."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    finally:
        fig.clear()  # the object API has no pyplot registry to close; free the artists now
    out = Path(out)
    atomic_write_bytes(out, buf.getvalue())
    return out


def _floats(history: Sequence[dict[str, Any]], key: str) -> list[float]:
    """One history column as floats; blanks (a field a writer left empty) become NaN, so lines break."""
    values = []
    for row in history:
        v = row.get(key)
        try:
            values.append(float(v) if v not in (None, "") else math.nan)
        except (TypeError, ValueError):
            values.append(math.nan)
    return values


def training_curves(history: list[dict[str, Any]], out: Path) -> Path | None:
    """Loss and accuracy per epoch, train against validation: shows over- or under-fitting at a glance."""
    if not history:
        return None
    epochs = _floats(history, "epoch")
    if any(math.isnan(e) for e in epochs):
        epochs = [float(i + 1) for i in range(len(history))]
    fig = Figure(figsize=(10, 3.8))
    marker = "o" if len(history) <= 30 else None  # a single epoch still shows as a point
    for ax, metric, title in zip(fig.subplots(1, 2), ("loss", "accuracy"), ("Loss", "Accuracy"), strict=True):
        for split, style in (("train", "-"), ("val", "--")):
            ax.plot(epochs, _floats(history, f"{split}_{metric}"), style, marker=marker, label=split)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
        if len(epochs) <= 20:
            ax.set_xticks(epochs)
    fig.tight_layout()
    return _save(fig, out)


def confusion_matrix(cm: list[list[int]], out: Path) -> Path:
    """Counts per (true, predicted) class, so the reader sees which mistake the model makes, not just how many."""
    arr = np.asarray(cm, dtype=np.int64)
    if arr.shape != (len(CLASS_NAMES), len(CLASS_NAMES)):
        raise RealfakeError(f"confusion matrix must be {len(CLASS_NAMES)}x{len(CLASS_NAMES)}, got {arr.shape}")
    fig = Figure(figsize=(4.2, 3.8))
    ax = fig.subplots()
    im = ax.imshow(arr, cmap="Blues", vmin=0, vmax=max(int(arr.max()), 1))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    total = max(int(arr.sum()), 1)
    half = arr.max() / 2
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            ax.text(
                j,
                i,
                f"{arr[i, j]}\n({arr[i, j] / total:.1%})",
                ha="center",
                va="center",
                color="white" if arr[i, j] > half else "black",
                fontsize=11,
            )
    ticks = range(len(CLASS_NAMES))
    ax.set_xticks(ticks, CLASS_NAMES)
    ax.set_yticks(ticks, CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (test)")
    fig.tight_layout()
    return _save(fig, out)


def _two_classes(labels: Any, p_fake: Any) -> tuple[np.ndarray, np.ndarray] | None:
    y = np.asarray(labels).astype(int).ravel()
    p = np.asarray(p_fake, dtype=np.float64).ravel()
    if len(y) != len(p):
        raise RealfakeError(f"{len(y)} labels but {len(p)} scores")
    return (y, p) if len(np.unique(y)) == 2 else None


def roc_curve(labels: Any, p_fake: Any, out: Path) -> Path | None:
    """ROC with FAKE as positive; None when one class is missing (the curve is undefined)."""
    both = _two_classes(labels, p_fake)
    if both is None:
        return None
    y, p = both
    fpr, tpr, _ = skm.roc_curve(y, p)
    auc = skm.roc_auc_score(y, p)
    fig = Figure(figsize=(4.6, 4.2))
    ax = fig.subplots()
    ax.plot(fpr, tpr, lw=2, label=f"model (AUC = {auc:.4f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance (AUC = 0.5)")
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="false positive rate (REAL called FAKE)",
        ylabel="true positive rate (FAKE caught)",
        title="ROC curve (test, positive = FAKE)",
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return _save(fig, out)


def pr_curve(labels: Any, p_fake: Any, out: Path) -> Path | None:
    """Precision-recall with FAKE as positive; None when one class is missing."""
    both = _two_classes(labels, p_fake)
    if both is None:
        return None
    y, p = both
    precision, recall, _ = skm.precision_recall_curve(y, p)
    ap = skm.average_precision_score(y, p)
    base = float(y.mean())
    fig = Figure(figsize=(4.6, 4.2))
    ax = fig.subplots()
    ax.step(recall, precision, where="post", lw=2, label=f"model (AP = {ap:.4f})")
    ax.axhline(base, ls=":", color="grey", label=f"chance (AP = {base:.2f})")
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="recall (FAKE)",
        ylabel="precision (FAKE)",
        title="Precision-recall curve (test)",
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    return _save(fig, out)


def prediction_grid(images: Any, labels: Any, p_fake: Any, threshold: float, out: Path) -> Path | None:
    """Test images with prediction and truth; green titles when right, red when wrong.

    p is the model's probability for the class it predicted, so a confident mistake reads as a high p in red.
    """
    imgs = np.asarray(images)
    y = np.asarray(labels).astype(int).ravel()
    p = np.asarray(p_fake, dtype=np.float64).ravel()
    if imgs.ndim not in (3, 4) or len(imgs) == 0:
        return None
    if not len(imgs) == len(y) == len(p):
        raise RealfakeError(f"samples disagree: {len(imgs)} images, {len(y)} labels, {len(p)} scores")
    k = min(len(imgs), MAX_GRID_IMAGES)
    ncols = min(k, max(4, math.ceil(math.sqrt(k))))
    nrows = math.ceil(k / ncols)
    fig = Figure(figsize=(1.9 * ncols, 2.2 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= k:
            continue
        pred = int(is_fake(p[i], threshold))
        p_pred = p[i] if pred == 1 else 1.0 - p[i]
        gray = imgs[i].ndim == 2 or imgs[i].shape[-1] == 1
        ax.imshow(
            imgs[i].squeeze() if gray else imgs[i], cmap="gray" if gray else None, interpolation="nearest"
        )  # nearest: 32 px stay crisp pixels instead of a blur
        ax.set_title(
            f"pred {CLASS_NAMES[pred]} (p={p_pred:.2f})\ntrue {CLASS_NAMES[y[i]]}",
            fontsize=8,
            color=_RIGHT if pred == y[i] else _WRONG,
        )
    shown = f"{k} of {len(imgs)}" if k < len(imgs) else f"{k}"
    fig.suptitle(f"Test images ({shown}); green = right, red = wrong, threshold {threshold:g}", fontsize=10)
    fig.tight_layout()
    return _save(fig, out)


def reliability_diagram(labels: Any, logits: Any, cal: Calibration, out: Path, data: str = "test") -> Path | None:
    """Fraction truly FAKE against mean p_fake per bin, before and after calibration (`cal.p_fake`), in equal-width
    bins and, calibrated, in equal-mass bins; under it the number of images in each equal-width bin, since a point
    resting on three images says little and ECE weighs it by that count."""

    y = np.asarray(labels).astype(int).ravel()
    z = np.asarray(logits, dtype=np.float64).ravel()
    if len(y) == 0 or len(y) != len(z):
        return None
    fig = Figure(figsize=(5.4, 6.6))
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    p_cal = cal.p_fake(z)
    calibrated = f"calibrated (T = {cal.temperature:.3g})"
    for p, style, name in ((sigmoid(z), "s--", "uncalibrated"), (p_cal, "o-", calibrated)):
        b = reliability_bins(y, p)
        pts = [(mp, fy) for mp, fy, c in zip(b["mean_p"], b["frac_fake"], b["count"], strict=True) if c]
        ax.plot([a for a, _ in pts], [f for _, f in pts], style, lw=1.5, ms=4,
                label=f"{name}, equal-width ECE {ece(y, p):.3f}")
    mass = equal_mass_bins(y, p_cal)
    per_bin = round(len(y) / max(len(mass["count"]), 1))
    ax.plot(mass["mean_p"], mass["frac_fake"], "D", color="#8250df", ms=5, mfc="none",
            label=f"calibrated, {len(mass['count'])} equal-mass bins (~{per_bin:,} images each), "
                  f"ECE {ece_equal_mass(y, p_cal):.3f}")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), ylabel="fraction FAKE in bin",
           title=f"Reliability diagram ({data}, n = {len(y):,})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)

    b = reliability_bins(y, p_cal)
    edges = np.asarray(b["edges"])
    counts = np.asarray(b["count"], dtype=float)
    hist.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#0969da", alpha=0.6,
             edgecolor="white", label="calibrated p(FAKE), equal-width bins")
    top = max(float(counts.max()), 1.0)
    for left, width, c in zip(edges[:-1], np.diff(edges), counts, strict=True):
        hist.text(left + width / 2, c + top * 0.03, f"{int(c):,}", ha="center", va="bottom", fontsize=6, rotation=90)
    hist.set(ylim=(0, top * 1.45), xlabel="predicted p(FAKE); below: calibrated, equal-width bins",
             ylabel="images in bin")
    hist.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)


def robustness_plot(result: dict[str, Any], out: Path) -> Path | None:
    """Accuracy and ROC AUC per degradation, applied to all images, REAL only and FAKE only; the clean
    figure as a line. A large gap between REAL-only and FAKE-only exposes a format shortcut."""
    rows = [r for r in result.get("conditions", []) if isinstance(r, dict)]
    clean = next((r for r in rows if r.get("condition") == "clean"), None)
    names = list(dict.fromkeys(r["condition"] for r in rows if r.get("applied_to") == "all" and r is not clean))
    if clean is None or not names:
        return None
    by = {(r["condition"].split("/")[0], r.get("applied_to")): r for r in rows}
    x = np.arange(len(names))
    fig = Figure(figsize=(11, 6.4))
    axes = fig.subplots(2, 1, sharex=True)
    for ax, key, label in zip(axes, ("accuracy", "roc_auc"), ("accuracy", "ROC AUC"), strict=True):
        for k, (target, color) in enumerate((("all", "#0969da"), ("REAL", "#1a7f37"), ("FAKE", "#cf222e"))):
            vals = [by.get((n, target), {}).get(key) for n in names]
            ax.bar(x + (k - 1) * 0.27, [np.nan if v is None else v for v in vals], 0.27, color=color,
                   label="all images" if target == "all" else f"{target} only")
        if clean.get(key) is not None:
            ax.axhline(clean[key], color="black", ls="--", lw=1, label=f"clean ({clean[key]:.3f})")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.02)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(ncol=4, fontsize=8, loc="lower left")
    axes[0].set_title(f"Robustness ({result.get('split', 'test')}, n = {result.get('n', '?')})")
    axes[1].set_xticks(x, names, rotation=45, ha="right")
    fig.tight_layout()
    return _save(fig, out)


def read_history(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, p_fake) from predictions.csv."""
    rows = read_history(path)
    try:
        labels = np.array([int(float(r["label"])) for r in rows], dtype=int)
        p_fake = np.array([float(r["p_fake"]) for r in rows], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise RealfakeError(f"{path} needs numeric label and p_fake columns ({e})") from None
    return labels, p_fake


def read_logits(path: Path) -> np.ndarray | None:
    """The raw logit column of predictions.csv; None for runs written before it existed."""
    rows = read_history(path)
    if not rows or "logit" not in rows[0]:
        return None
    try:
        return np.array([float(r["logit"]) for r in rows], dtype=np.float64)
    except (TypeError, ValueError):
        return None


def draw_all(run_dir: Path) -> dict[str, Path]:
    """Every figure whose inputs the run folder holds, written to run_dir/plots; name -> path of those written."""
    run = RunDir(run_dir)
    plots_dir = run / RunDir.PLOTS
    remove_stale_temporaries(plots_dir)  # a killed draw's temporaries, also of figures not drawn this time
    written: dict[str, Path | None] = {}
    metrics = run.read_json(RunDir.METRICS)
    threshold = float(metrics.get("threshold") or 0.5)
    cal = Calibration.from_info(run.info(), threshold)

    if run.has(RunDir.HISTORY):
        written["training_curves"] = training_curves(
            read_history(run / RunDir.HISTORY), plots_dir / PLOT_FILES["training_curves"]
        )
    if metrics.get("confusion_matrix") is not None:
        written["confusion_matrix"] = confusion_matrix(
            metrics["confusion_matrix"], plots_dir / PLOT_FILES["confusion_matrix"]
        )
    if run.has(RunDir.PREDICTIONS):
        labels, p_fake = read_predictions(run / RunDir.PREDICTIONS)
        written["roc_curve"] = roc_curve(labels, p_fake, plots_dir / PLOT_FILES["roc_curve"])
        written["pr_curve"] = pr_curve(labels, p_fake, plots_dir / PLOT_FILES["pr_curve"])
        logits = read_logits(run / RunDir.PREDICTIONS)
        if logits is not None:
            written["reliability_diagram"] = reliability_diagram(
                labels, logits, cal, plots_dir / PLOT_FILES["reliability_diagram"],
            )
    for ev in run.evaluations():  # p_fake is meant as a probability wherever it is measured: show how far it is one
        if ev.has(RunDir.PREDICTIONS) and (z := read_logits(ev / RunDir.PREDICTIONS)) is not None:
            name = evaluation_plot(ev.path.name)
            written[name] = reliability_diagram(read_predictions(ev / RunDir.PREDICTIONS)[0], z, cal,
                                                plots_dir / f"{name}.png", data=ev.path.name)
    if run.has(RunDir.ROBUSTNESS):
        written["robustness"] = robustness_plot(run.read_json(RunDir.ROBUSTNESS), plots_dir / PLOT_FILES["robustness"])
    if run.has(RunDir.SAMPLES):
        with np.load(run / RunDir.SAMPLES, allow_pickle=False) as s:
            missing = {"images", "labels", "p_fake"} - set(s.files)
            if missing:
                raise RealfakeError(f"{run / RunDir.SAMPLES} lacks {', '.join(sorted(missing))}")
            written["predictions_grid"] = prediction_grid(
                s["images"], s["labels"], s["p_fake"], threshold, plots_dir / PLOT_FILES["predictions_grid"]
            )
    done = {name: path for name, path in written.items() if path is not None}
    for name, file in PLOT_FILES.items():  # a figure from an earlier draw whose inputs are gone would mislead
        if name not in done:
            (plots_dir / file).unlink(missing_ok=True)
    for old in plots_dir.glob(f"{EVALUATION_PLOT}*.png"):
        if old.stem not in done:
            old.unlink(missing_ok=True)
    return done


EVALUATION_PLOT = "reliability_diagram-"


def evaluation_plot(evaluation: str) -> str:
    """The figure name (and file stem) of an evaluation's reliability diagram."""
    return EVALUATION_PLOT + evaluation
