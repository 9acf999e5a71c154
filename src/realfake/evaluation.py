"""The `evaluate` command: a Detector's verdicts on a run's test split, or on all of another data set, with
every figure written beside them (metrics.json, predictions.csv, samples.npz).

Training ends by calling `evaluate_split` with the Detector it just trained; `realfake evaluate RUN` loads
the same Detector from the run folder. Either way the verdicts come from `Detector` and its calibration, the
figures from `realfake.metrics`, and the files go where `RunDir` says.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import csv
import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from realfake.atomic import WriteError, atomic_dir
from realfake.calibration import Calibration
from realfake.config import RunConfig
from realfake.data.cache import Dataset, check_two_classes, load_dataset
from realfake.data.extra import with_extra_fakes
from realfake.data.splits import split_from_json
from realfake.detector import Detector
from realfake.infer import logits_by_chunk
from realfake.metrics import calibration_metrics, compute_metrics, per_source_metrics
from realfake.rundir import RunDir

Log = Callable[[str], None]
GRID_SIZE = 16  # images in the report's prediction grid: up to half wrong ones, the rest right ones
PREDICTION_FIELDS = ["path", "label", "p_fake", "logit", "predicted", "source"]


def log_to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def run_data(cfg: RunConfig, progress: bool = True, log: Log = log_to_stderr) -> Dataset:
    """The decoded data set a run's config names (the bundled sample when it names none), with both classes, and
    the config's extra fakes appended after it (see realfake.data.extra), so a saved split fits it."""
    if cfg.data is None:
        log(
            "no --data given: using the bundled demo sample (2,000 images; shows the pipeline, not a "
            "detector's skill). For CIFAKE: `realfake download`, then `realfake train --data PATH`."
        )
    ds = load_dataset(cfg.data, cfg.limit, cfg.seed, cfg.workers, progress)
    check_two_classes(ds)
    origin = "cache" if ds.from_cache else "decoded"
    log(f"data: {len(ds):,} images from {ds.source_name} ({origin}; {len(ds.skipped)} unreadable skipped)")
    if cfg.extra_fakes is not None:
        ds = with_extra_fakes(ds, cfg.extra_fakes, cfg.seed, cfg.workers, progress, cfg.extra_fakes_share,
                              cfg.protocol, log)
        log(f"extra fakes: {len(ds) - (ds.extra_start or 0):,} images from {cfg.extra_fakes} (training split only)")
    return ds


def metrics_line(m: dict[str, Any], name: str = "test") -> str:
    """The headline figures in one line, for the terminal: the labels users get per true class first (what they
    act on), then the figures at the threshold, which count an `uncertain` image as REAL or FAKE."""
    from realfake.report.summary import label_shares_of, shares_text

    auc = "n/a" if m.get("roc_auc") is None else f"{m['roc_auc']:.4f}"
    ece = "" if m.get("ece") is None else f"  ece {m['ece']:.4f}"
    if m.get("ece_uncalibrated") is not None:
        ece += f" (uncalibrated {m['ece_uncalibrated']:.4f})"
    if m.get("ece_equal_mass") is not None:
        ece += f"  ece_equal_mass {m['ece_equal_mass']:.4f}"
    threshold = f"accuracy {m['accuracy']:.4f}  f1 {m['f1']:.4f}  roc_auc {auc}{ece}  n {m['n']}"
    shares = label_shares_of(m)
    if shares:
        return f"{name}: {shares_text(shares)}  |  at the threshold: {threshold}"
    ood = m.get("ood") or {}
    unsure = "" if ood.get("fraction_uncertain") is None else (
        f"  uncertain {ood['fraction_uncertain']:.1%}  confidently wrong {ood['confidently_wrong']:.1%}")
    return f"{name}: {threshold}{unsure}"


def evaluate_split(out: RunDir, ds: Dataset, idx: np.ndarray, detector: Detector) -> dict[str, Any]:
    """Predict ds[idx] with the detector and its calibration; write metrics.json, predictions.csv and
    samples.npz to `out`."""
    cal = detector.calibration
    labels = ds.labels[idx]
    logits = logits_by_chunk(detector.predict_logits, ds.images, idx)
    sources = [ds.sources[int(i)] for i in idx]
    metrics, p_fake, verdicts = split_metrics(labels, logits, cal, sources)
    metrics["compute_precision"] = detector.precision  # fp32 / bf16 arithmetic ("precision" is the metric)
    out.path.mkdir(parents=True, exist_ok=True)
    out.write_json(RunDir.METRICS, metrics)
    out.write_text(RunDir.PREDICTIONS, predictions_csv([ds.paths[i] for i in idx], labels, p_fake, logits, verdicts,
                                                       sources))
    _write_samples(out, ds.images, idx, labels, p_fake, detector)
    return metrics


def split_metrics(
    labels: np.ndarray, logits: np.ndarray, cal: Calibration, sources: list[str | None],
) -> tuple[dict[str, Any], np.ndarray, list[str]]:
    """(metrics.json's figures, p_fake, the verdicts) of raw logits under a calibration: one function, so a
    split evaluated now and an adapted run's re-scored parent split carry the same figures."""
    p_fake, ood = cal.p_fake(logits), cal.ood_scores(logits)
    verdicts = cal.labels(p_fake, ood)
    metrics = compute_metrics(labels, p_fake, cal.threshold)
    metrics.update(calibration_metrics(labels, logits, cal))
    if any(s is not None for s in sources):
        metrics["per_source"] = per_source_metrics(labels, p_fake, cal.threshold, sources, cal.uncertain(p_fake, ood),
                                                   verdicts)
    return metrics, p_fake, verdicts


def predictions_csv(
    paths: list[str], labels: np.ndarray, p_fake: np.ndarray, logits: np.ndarray, verdicts: list[str],
    sources: list[str | None],
) -> str:
    """predictions.csv's text: one row per image, in PREDICTION_FIELDS order."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(PREDICTION_FIELDS)
    w.writerows(
        (path, int(y), f"{p:.6f}", f"{z:.6f}", v, s or "")
        for path, y, p, z, v, s in zip(paths, labels, p_fake, logits, verdicts, sources, strict=True)
    )
    return buf.getvalue()


def rescore_predictions(run: RunDir, cal: Calibration) -> tuple[dict[str, Any], str] | None:
    """(metrics, predictions.csv text) of a run's test split under another calibration, from the raw logits its
    predictions.csv recorded: no data to load and no model to run. Right for the same weights only (an adapted
    run that re-fitted its calibration alone); None when the file is missing or predates its logit column."""
    text = run.read_text(RunDir.PREDICTIONS)
    if text is None:
        return None
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or not {"path", "label", "logit"} <= set(rows[0]):
        return None
    try:
        labels = np.array([int(float(r["label"])) for r in rows], dtype=np.int64)
        logits = np.array([float(r["logit"]) for r in rows], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if not np.all(np.isfinite(logits)) or not np.isin(labels, (0, 1)).all():
        return None
    sources = [r.get("source") or None for r in rows]
    metrics, p_fake, verdicts = split_metrics(labels, logits, cal, sources)
    return metrics, predictions_csv([r["path"] for r in rows], labels, p_fake, logits, verdicts, sources)


def _write_samples(
    out: RunDir, images: np.ndarray, idx: np.ndarray, labels: np.ndarray, p: np.ndarray, detector: Detector,
) -> None:
    """A fixed pick of test images (images[idx]) for the report's grid: wrong ones first (up to half), then
    right ones."""
    right_mask = detector.calibration.is_fake(p) == (labels == 1)
    wrong, right = np.flatnonzero(~right_mask), np.flatnonzero(right_mask)
    rng = np.random.default_rng(0)
    pick_wrong = rng.permutation(wrong)[: GRID_SIZE // 2]
    pick = np.concatenate([pick_wrong, rng.permutation(right)[: GRID_SIZE - len(pick_wrong)]]).astype(int)
    buf = io.BytesIO()
    np.savez_compressed(buf, images=np.asarray(images[idx[pick]]), labels=labels[pick], p_fake=p[pick])
    out.write_bytes(RunDir.SAMPLES, buf.getvalue())


def evaluation_inputs(
    run_dir: str | Path, data: str | Path | None, *, device: str = "auto", progress: bool = True,
    log: Log = log_to_stderr, precision: str | None = None,
) -> tuple[Detector, Dataset, np.ndarray, RunDir]:
    """What to evaluate a run on: its own test split (written to the run) or all of `data` (written to
    run_dir/evaluations/<data>); `precision` None = the run's own."""
    run = RunDir(run_dir)
    det = Detector.from_run(run.path, device=device, precision=precision)
    cfg = run.config()
    if data is None:
        run.require(RunDir.SPLIT, what="a run directory")
        ds = run_data(cfg, progress, log)
        return det, ds, split_from_json(run.read_json(RunDir.SPLIT), len(ds))["test"], run
    ds = load_dataset(data, None, cfg.seed, cfg.workers, progress)
    return det, ds, np.arange(len(ds)), run.evaluation(data)


def evaluate(
    run_dir: str | Path, data: str | Path | None = None, *, device: str = "auto", progress: bool = True,
    log: Log = log_to_stderr, precision: str | None = None,
) -> dict[str, Any]:
    """Re-evaluate a run: on its own test split, or on every image of another data set (`data`), computing in
    `precision` (auto | fp32 | bf16; None = the run's own setting).

    An evaluation on other data is written whole into a temporary sibling folder and swapped in at the end
    (atomic_dir): a failure or a kill midway leaves the previous evaluation of that data as it was, never a
    folder of new predictions beside old metrics.
    """
    from realfake import report

    run = RunDir(run_dir)
    det, ds, idx, out = evaluation_inputs(run.path, data, device=device, progress=progress, log=log,
                                          precision=precision)
    if data is None:
        metrics = _evaluate_into(out, run, ds, idx, det, None)
        log(metrics_line(metrics))
    else:
        try:
            with atomic_dir(out.path) as tmp:
                tmp.chmod(0o755)  # mkdtemp makes 0700; an evaluation is shared with its run, as before
                metrics = _evaluate_into(RunDir(tmp), run, ds, idx, det, ds.report())
        except WriteError as e:  # named after the evaluation's own file, not its temporary folder's
            raise WriteError(out / e.path.name, e.error) from None
        except OSError as e:  # making or swapping the folder: disk full, read-only
            raise WriteError(out.path, e) from None
        log(metrics_line(metrics, ds.source_name))
        log(f"wrote {out / RunDir.METRICS}")
    if run.has(RunDir.METRICS):
        report.build(run.path)
    return metrics


def _evaluate_into(
    out: RunDir, run: RunDir, ds: Dataset, idx: np.ndarray, det: Detector, data_report: dict[str, Any] | None
) -> dict[str, Any]:
    """Every file of one evaluation, written to `out`."""
    metrics = evaluate_split(out, ds, idx, det)
    seen = run.training_sources()
    present = sorted({s for s in (ds.sources[int(i)] for i in idx) if s is not None})
    if present and seen is not None:
        metrics["sources_unseen_in_training"] = [s for s in present if s not in seen]
        out.write_json(RunDir.METRICS, metrics)
    if data_report is not None:
        out.write_json(RunDir.DATA_REPORT, data_report)
    return metrics
