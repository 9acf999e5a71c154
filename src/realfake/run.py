"""A run from start to end: data -> split -> model -> fit -> evaluate -> report, all in one run directory.

This is the library behind `realfake train/evaluate/report`; the CLI only parses options and prints.
"""

from __future__ import annotations

import csv
import io
import json
import platform
import re
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from realfake import __version__
from realfake.atomic import atomic_write_text
from realfake.calibration import Calibration, calibrate, calibration_metrics, labels_of
from realfake.config import CLASS_NAMES, RunConfig, load_yaml, validated
from realfake.data.cache import Dataset, check_two_classes, load_dataset
from realfake.data.splits import make_split, split_from_json, split_to_json
from realfake.detector import Detector
from realfake.device import select_device
from realfake.errors import RealfakeError
from realfake.evaluate import compute_metrics
from realfake.fit import fit, predict_logits, save_weights, state_to_cpu
from realfake.models import apply_recipe, build

Log = Callable[[str], None]
GRID_SIZE = 16  # images in the report's prediction grid: up to half wrong ones, the rest right ones


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


write_json = _json  # for sibling modules (robustness) that write run files the same way


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def default_run_dir(model: str) -> Path:
    return Path("runs") / f"{model}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def train(
    cfg: RunConfig | None = None,
    *,
    progress: bool = True,
    log: Log = _stderr,
    on_epoch_end: Callable[[int], None] | None = None,
    **overrides: Any,
) -> Path:
    """Train a new run from a config (or keyword overrides of the defaults); returns the run directory."""
    cfg = cfg or RunConfig()
    if overrides:
        cfg = validated(RunConfig, {**cfg.model_dump(exclude_unset=True), **overrides})  # unset stays unset
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg.model)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RealfakeError(f"{run_dir} already holds files: continue it with --resume {run_dir}, or pick --out")
    device = select_device(cfg.device)
    ds = _load_data(cfg, progress, log)
    split = make_split(ds.labels, ds.splits, cfg.protocol, cfg.seed)
    torch.manual_seed(cfg.seed)  # the model's random initialisation is part of what --seed repeats
    built = build(cfg.model, cfg.weights)
    cfg = apply_recipe(cfg, built.recipe)  # the model's training defaults, for options the user left unset
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.out = str(run_dir)
    if cfg.data is not None:  # saved absolute, so evaluate/resume work from any working directory
        cfg.data = str(Path(cfg.data).expanduser().resolve())
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    _json(run_dir / "split.json", split_to_json(split, protocol=cfg.protocol, seed=cfg.seed, data_key=ds.key))
    _json(
        run_dir / "data_report.json",
        {**ds.report(), "split": _split_summary(ds, split, cfg.protocol), "split_sources": _split_sources(ds, split)},
    )
    _json(
        run_dir / "run.json",
        {
            "model": cfg.model,
            "weights_used": built.weights_used,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "status": "training",
            "threshold": cfg.threshold,
            "device": str(device),
            "realfake": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_threads": torch.get_num_threads(),
        },
    )
    log(f"run: {run_dir}  model: {cfg.model} ({built.weights_used})  device: {device}")
    return _fit_and_finish(run_dir, cfg, ds, split, built.model, device, False, progress, log, on_epoch_end)


def resume(
    run_dir: str | Path,
    *,
    epochs: int | None = None,
    progress: bool = True,
    log: Log = _stderr,
    on_epoch_end: Callable[[int], None] | None = None,
) -> Path:
    """Continue an interrupted run from its last checkpoint (optionally with a new epoch budget)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "split.json").is_file():
        raise RealfakeError(f"{run_dir} is not a run directory (no config.yaml / split.json)")
    cfg = validated(RunConfig, load_yaml(run_dir / "config.yaml"))
    if epochs is not None:
        cfg.epochs = epochs
        atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    device = select_device(cfg.device)
    ds = _load_data(cfg, progress, log)
    split = split_from_json(_read_json(run_dir / "split.json"), len(ds))
    model = build(cfg.model, "none").model  # the checkpoint supplies every weight
    log(f"resuming {run_dir} on {device}")
    return _fit_and_finish(run_dir, cfg, ds, split, model, device, True, progress, log, on_epoch_end)


def _load_data(cfg: RunConfig, progress: bool, log: Log) -> Dataset:
    if cfg.data is None:
        log(
            "no --data given: using the bundled demo sample (2,000 images; shows the pipeline, not a "
            "detector's skill). For CIFAKE: `realfake download`, then `realfake train --data PATH`."
        )
    ds = load_dataset(cfg.data, cfg.limit, cfg.seed, cfg.workers, progress)
    check_two_classes(ds)
    origin = "cache" if ds.from_cache else "decoded"
    log(f"data: {len(ds):,} images from {ds.source_name} ({origin}; {len(ds.skipped)} unreadable skipped)")
    return ds


def _split_summary(ds: Dataset, split: dict[str, np.ndarray], protocol: str) -> dict[str, Any]:
    out: dict[str, Any] = {"protocol": protocol}
    for name, idx in split.items():
        counts = np.bincount(ds.labels[idx], minlength=len(CLASS_NAMES))
        out[name] = {"n": int(len(idx)), **{c: int(n) for c, n in zip(CLASS_NAMES, counts, strict=True)}}
    return out


def _split_sources(ds: Dataset, split: dict[str, np.ndarray]) -> dict[str, dict[str, int]]:
    """Images per source in each split: what the model saw in training, for "never seen" statements later."""
    out: dict[str, dict[str, int]] = {}
    for name, idx in split.items():
        counts: dict[str, int] = {}
        for i in idx:
            if (src := ds.sources[int(i)]) is not None:
                counts[src] = counts.get(src, 0) + 1
        out[name] = dict(sorted(counts.items()))
    return out


def _fit_and_finish(
    run_dir: Path,
    cfg: RunConfig,
    ds: Dataset,
    split: dict[str, np.ndarray],
    model: torch.nn.Module,
    device: torch.device,
    resuming: bool,
    progress: bool,
    log: Log,
    on_epoch_end: Callable[[int], None] | None,
) -> Path:
    result = fit(model, ds.images, ds.labels, split, cfg, run_dir, device, resuming, on_epoch_end, progress)
    save_weights(state_to_cpu(model), run_dir / "model.safetensors")
    # Temperature and threshold come from the validation split, never the test split they are judged on.
    val = split["val"]
    val_logits = predict_logits(model, np.asarray(ds.images[val]), device, cfg.eval_batch_size, tta=cfg.tta)
    cal = calibrate(val_logits, ds.labels[val], cfg.policy, cfg.uncertain, cfg.tta)
    info = _read_json(run_dir / "run.json")
    info.update(
        status="trained",
        epochs_run=len(result.history),
        best_epoch=result.best_epoch,
        stopped_early=result.stopped_early,
        train_seconds=round(sum(r["seconds"] for r in result.history), 2),
        **cal.to_info(),
    )
    _json(run_dir / "run.json", info)
    log(f"trained {len(result.history)} epochs; best epoch {result.best_epoch}")
    log(f"calibration (validation): temperature {cal.temperature:.3f}, threshold {cal.threshold:.4f} "
        f"({cal.threshold_policy})")
    metrics = evaluate_split(run_dir, ds, split["test"], device=str(device))
    log(_metrics_line(metrics))
    report_path = report(run_dir)
    log(f"report: {report_path}")
    return run_dir


def _metrics_line(m: dict[str, Any]) -> str:
    auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.4f}"
    ece = "" if m.get("ece") is None else f"  ece {m['ece']:.4f} (uncalibrated {m['ece_uncalibrated']:.4f})"
    return f"test: accuracy {m['accuracy']:.4f}  f1 {m['f1']:.4f}  roc_auc {auc}{ece}  n {m['n']}"


def calibration_of(det: Detector) -> Calibration:
    """The run's stored temperature, threshold, band and TTA (runs from before calibration: T = 1)."""
    return Calibration.from_info(det.info, det.threshold)


def logits_of(det: Detector, images: np.ndarray) -> np.ndarray:
    """Raw (uncalibrated) logits from the detector, with the run's test-time augmentation."""
    return np.asarray(det.predict_logits(np.asarray(images)), dtype=np.float64)


def per_source_metrics(
    labels: np.ndarray, p_fake: np.ndarray, threshold: float, sources: list[str | None]
) -> dict[str, Any]:
    """compute_metrics for each source's images; for a one-class source, also its AUC against every image of
    the other class in the set (how separable this generator is from the real photos, say)."""
    src = np.array([s if s is not None else "(none)" for s in sources], dtype=object)
    y = np.asarray(labels).astype(int)
    out: dict[str, Any] = {}
    for name in sorted(set(src.tolist())):
        sel = src == name
        m = compute_metrics(y[sel], p_fake[sel], threshold)
        m.pop("per_class", None)
        classes = np.unique(y[sel])
        if len(classes) == 1:
            other = y != classes[0]
            if other.any():
                both = sel | other
                m["roc_auc_vs_other_class"] = compute_metrics(y[both], p_fake[both], threshold)["roc_auc"]
        m["classes"] = [CLASS_NAMES[int(c)] for c in classes]
        out[str(name)] = m
    return out


def evaluate_split(
    out_dir: Path, ds: Dataset, idx: np.ndarray, device: str = "auto", detector: Detector | None = None,
    run_dir: Path | None = None,
) -> dict[str, Any]:
    """Predict ds[idx] with the run's detector and stored calibration; write metrics.json, predictions.csv
    and samples.npz."""
    det = detector or Detector.load(run_dir or out_dir, device=device)
    cal = calibration_of(det)
    images, labels = ds.images[idx], ds.labels[idx]
    logits = logits_of(det, np.asarray(images))
    p_fake = cal.p_fake(logits)
    metrics = compute_metrics(labels, p_fake, cal.threshold)
    metrics.update(calibration_metrics(labels, logits, cal))
    sources = [ds.sources[int(i)] for i in idx]
    if any(s is not None for s in sources):
        metrics["per_source"] = per_source_metrics(labels, p_fake, cal.threshold, sources)
    out_dir.mkdir(parents=True, exist_ok=True)
    _json(out_dir / "metrics.json", metrics)
    verdicts = labels_of(p_fake, cal.threshold, cal.uncertain_band)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label", "p_fake", "logit", "predicted", "source"])
    w.writerows(
        (ds.paths[i], int(y), f"{p:.6f}", f"{z:.6f}", v, ds.sources[int(i)] or "")
        for i, y, p, z, v in zip(idx, labels, p_fake, logits, verdicts, strict=True)
    )
    atomic_write_text(out_dir / "predictions.csv", buf.getvalue())
    _write_samples(out_dir, images, labels, p_fake, cal.threshold)
    return metrics


def _write_samples(out_dir: Path, images: np.ndarray, labels: np.ndarray, p: np.ndarray, t: float) -> None:
    """A fixed pick of test images for the report's grid: wrong ones first (up to half), then right ones."""
    wrong = np.flatnonzero((p >= t) != (labels == 1))
    right = np.flatnonzero((p >= t) == (labels == 1))
    rng = np.random.default_rng(0)
    pick_wrong = rng.permutation(wrong)[: GRID_SIZE // 2]
    pick = np.concatenate([pick_wrong, rng.permutation(right)[: GRID_SIZE - len(pick_wrong)]]).astype(int)
    buf = io.BytesIO()
    np.savez_compressed(buf, images=np.asarray(images[pick]), labels=labels[pick], p_fake=p[pick])
    tmp = out_dir / ".samples.npz.tmp"
    tmp.write_bytes(buf.getvalue())
    tmp.replace(out_dir / "samples.npz")


def evaluate(
    run_dir: str | Path, data: str | Path | None = None, *, device: str = "auto", progress: bool = True,
    log: Log = _stderr,
) -> dict[str, Any]:
    """Re-evaluate a run: on its own test split, or on every image of another data set (`data`)."""
    run_dir = Path(run_dir)
    det, ds, idx, out_dir = evaluation_inputs(run_dir, data, device=device, progress=progress, log=log)
    metrics = evaluate_split(out_dir, ds, idx, detector=det)
    seen = training_sources(run_dir)
    present = sorted({s for s in (ds.sources[int(i)] for i in idx) if s is not None})
    if present and seen is not None:
        metrics["sources_unseen_in_training"] = [s for s in present if s not in seen]
        _json(out_dir / "metrics.json", metrics)
    if data is not None:
        _json(out_dir / "data_report.json", ds.report())
        log(f"wrote {out_dir / 'metrics.json'}")
    if (run_dir / "metrics.json").is_file():
        report(run_dir)
    return metrics


def evaluation_inputs(
    run_dir: Path, data: str | Path | None, *, device: str = "auto", progress: bool = True, log: Log = _stderr
) -> tuple[Detector, Dataset, np.ndarray, Path]:
    """What to evaluate a run on: its own test split (written to the run) or all of `data` (written to
    run_dir/evaluations/<data>)."""
    det = Detector.load(run_dir, device=device)
    cfg = validated(RunConfig, load_yaml(run_dir / "config.yaml"))
    if data is None:
        ds = _load_data(cfg, progress, log)
        return det, ds, split_from_json(_read_json(run_dir / "split.json"), len(ds))["test"], run_dir
    ds = load_dataset(data, None, cfg.seed, cfg.workers, progress)
    return det, ds, np.arange(len(ds)), run_dir / "evaluations" / _slug(str(data))


def training_sources(run_dir: Path) -> set[str] | None:
    """Sources in the run's training split (data_report.json); None when the run cannot say."""
    rep = _read_json(Path(run_dir) / "data_report.json")
    if isinstance(rep.get("split_sources"), dict) and isinstance(rep["split_sources"].get("train"), dict):
        return set(rep["split_sources"]["train"])
    if isinstance(rep.get("sources"), dict):  # older runs: every source of the data, an upper bound
        return set(rep["sources"])
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(text).name or text).strip("-") or "data"


def report(run_dir: str | Path) -> Path:
    """(Re)draw every figure, the self-contained report.html and MODEL_CARD.md from the files in the run."""
    from realfake.report.html import build_report
    from realfake.report.model_card import write_model_card

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").is_file():
        raise RealfakeError(f"{run_dir} has no metrics.json yet: run `realfake evaluate {run_dir}` first")
    path = build_report(run_dir)
    write_model_card(run_dir)
    return path
