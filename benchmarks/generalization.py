"""Generators it never saw: train on the stand-in only, then judge each method at home and on a held-out
generator, in one table: `python -m benchmarks.generalization`.

For each method (a set of RunConfig overrides, picked with --methods) this
- trains a run through `realfake.training` (`--protocol official`: the stand-in's train/ folder, validation
  carved from it; the threshold, temperature and OOD quantiles are chosen on that validation split), into a
  temporary folder, never the repository or the shared data folder;
- reads the home figures from the run's own test-split evaluation (what `realfake train` reports);
- evaluates the run on a held-out set exactly as a user would, `realfake evaluate RUN --data HELDOUT`
  (`realfake.evaluation.evaluate`): HELDOUT is a temporary folder of REAL/ = --n-heldout stand-in test/REAL
  images and FAKE/ = --n-heldout images of the ganC generator (a family never trained on), files copied
  byte for byte; its metrics.json gives balanced accuracy at the stored threshold, fakes caught, ROC AUC and
  ECE;
- for the per-class figures metrics.json does not split (confidently wrong among the ganC fakes: labelled
  REAL and not 'uncertain'; 'uncertain' among in-distribution REAL test images) it predicts the same images
  through the same run's `Detector` and applies `realfake.metrics.calibration_metrics` to each class's
  logits; that the array path reproduces the evaluation's accuracy is checked and recorded.

Writes benchmarks/results/generalization/<machine>-<date>-<commit>.json atomically (rewritten after every method, so a
long run that is stopped keeps what it finished) and prints the Markdown table the README shows.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import DEFAULT_DATA, atomic_write_json, cache_dir, machine_info, result_path, write_final

REPO = Path(__file__).resolve().parents[1]
DEFAULT_HELDOUT = DEFAULT_DATA.parent / "ganC-fake.zip"
HELDOUT_NAME = "ganC"


# Each method: RunConfig overrides, its own default --limit (None: the whole stand-in), an epoch multiplier
# and a note for its table row.
METHODS: dict[str, dict[str, Any]] = {
    # Each method pins what it compares, so that a row means the same when the recipe changes.
    "fast": {"overrides": {"model": "fast", "augment": "flips", "threshold_policy": "fpr:0.005"}, "limit": None,
             "epochs_x": 1, "note": "flips; threshold by REAL alone (fpr:0.005)"},
    "fast-balanced": {
        "overrides": {"model": "fast", "augment": "flips", "threshold_policy": "balanced"}, "limit": None,
        "epochs_x": 1, "note": "flips; threshold maximising balanced accuracy on validation (the recipe before)",
    },
    "fast-robust": {
        "overrides": {"model": "fast", "augment": "robust", "threshold_policy": "fpr:0.005"}, "limit": None,
        "epochs_x": 1, "note": "augment=robust (random JPEG + blur); fpr:0.005: fast's recipe now",
    },
    "fast-simulate": {
        "overrides": {"model": "fast", "augment": "simulate", "threshold_policy": "real:0.005"}, "limit": None,
        "epochs_x": 1, "note": "augment=simulate (robust + artefact simulation: REAL images through random "
        "up-sampling decoders as extra FAKEs); real:0.005",
    },
    "fast-recipe": {"overrides": {"model": "fast"}, "limit": None, "epochs_x": 1,
                    "note": "fast's recipe as it stands (models/fast.py RECIPE)"},
    "seed-resnet50": {
        # weights none: the notebook's architecture from random initialisation, never a download attempt
        "overrides": {"model": "seed-resnet50", "weights": "none"}, "limit": 30_000, "epochs_x": 1,
        "note": "the original notebook's model, random init; limited subset (slow on CPU)",
    },
    "fast-long": {"overrides": {"model": "fast"}, "limit": None, "epochs_x": 2, "note": "twice the epochs"},
}
DEFAULT_METHODS = "fast,fast-balanced,fast-robust,seed-resnet50"


def log(msg: str) -> None:
    print(f"[generalization {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the held-out set


def image_members(zf: zipfile.ZipFile, folder: tuple[str, ...]) -> list[str]:
    """Image members whose lower-cased folder path ends with `folder` (e.g. ("test", "real")), sorted."""
    out = []
    for info in zf.infolist():
        parts = info.filename.lower().split("/")
        if info.is_dir() or parts[-1].startswith(".") or "__macosx" in parts:
            continue
        if tuple(parts[-1 - len(folder):-1]) == folder and parts[-1].rsplit(".", 1)[-1] in ("jpg", "jpeg", "png"):
            out.append(info.filename)
    return sorted(out)


def build_heldout(data: Path, heldout: Path, n: int, seed: int, out: Path) -> dict[str, Any]:
    """out/REAL/standin-test/* (n of the stand-in's test/REAL) and out/FAKE/ganC/* (n held-out fakes), copied
    byte for byte from the zips; the picks are random with `seed`. The sub-folders name each image's source."""
    picks: dict[str, Any] = {}
    for zip_path, folder, label, source in ((data, ("test", "real"), "REAL", "standin-test"),
                                            (heldout, ("fake",), "FAKE", HELDOUT_NAME)):
        with zipfile.ZipFile(zip_path) as zf:
            members = image_members(zf, folder)
            if len(members) < n:
                raise SystemExit(
                    f"generalization: {zip_path} has {len(members)} {'/'.join(folder).upper()} images, "
                    f"fewer than --n-heldout {n}"
                )
            chosen = sorted(np.random.default_rng(seed).choice(len(members), n, replace=False).tolist())
            target = out / label / source
            target.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                name = members[i]
                (target / f"{i:06d}-{Path(name).name}").write_bytes(zf.read(name))
        picks[label] = {"from": str(zip_path), "folder": "/".join(folder), "n": n, "available": len(members)}
    return picks


# ---------------------------------------------------------------- one method


def share(x: Any) -> float | None:
    return None if x is None else float(x)


def run_method(name: str, args: argparse.Namespace, heldout_dir: Path, work: Path) -> dict[str, Any]:
    """Train one method on the stand-in, then its home and held-out figures (see the module docstring)."""
    from realfake import training
    from realfake.config import RunConfig
    from realfake.evaluation import evaluate, evaluation_inputs
    from realfake.metrics import calibration_metrics, compute_metrics
    from realfake.rundir import RunDir

    spec = METHODS[name]
    limit = args.limit if args.limit is not None else spec["limit"]
    epochs = args.epochs * spec["epochs_x"]
    run_dir = work / "runs" / name
    cfg = RunConfig(
        data=str(args.data), protocol="official", seed=args.seed, limit=limit, epochs=epochs, device=args.device,
        out=str(run_dir), **spec["overrides"],
    )
    log(f"{name}: training ({cfg.model}, limit {limit or 'none'}, {epochs} epochs)")
    t = time.perf_counter()
    training.train(cfg, progress=args.progress, log=lambda m: log(f"{name}: {m}"))
    train_wall = time.perf_counter() - t
    run = RunDir(run_dir)
    info, home, report = run.info(), run.read_json(RunDir.METRICS), run.read_json(RunDir.DATA_REPORT)
    quiet = {"progress": False, "log": lambda m: None}

    # Home: 'uncertain' among the in-distribution REAL test images, through the run's own Detector.
    det, ds, idx, _ = evaluation_inputs(run_dir, None, device=args.device, **quiet)
    cal = det.calibration
    y_home = ds.labels[idx]
    z_home = det.predict_logits(np.asarray(ds.images[idx]))
    home_arrays = compute_metrics(y_home, cal.p_fake(z_home), cal.threshold)
    home_real = calibration_metrics(y_home[y_home == 0], z_home[y_home == 0], cal).get("ood", {})

    # Held out: the user's path, `realfake evaluate RUN --data HELDOUT`.
    log(f"{name}: evaluating on {heldout_dir.name} (REAL {args.n_heldout} + FAKE {args.n_heldout})")
    m = evaluate(run_dir, heldout_dir, device=args.device, **quiet)
    det, ds, idx, _ = evaluation_inputs(run_dir, heldout_dir, device=args.device, **quiet)
    y = ds.labels[idx]
    z = det.predict_logits(np.asarray(ds.images[idx]))
    arrays = compute_metrics(y, det.calibration.p_fake(z), det.calibration.threshold)
    fakes = calibration_metrics(y[y == 1], z[y == 1], det.calibration).get("ood", {})
    per_class = m["per_class"]
    recall = {c: per_class[c]["recall"] for c in ("REAL", "FAKE")}
    ood = m.get("ood", {})
    split = report.get("split", {})
    return {
        "method": name,
        "note": spec["note"],
        "overrides": spec["overrides"],
        "model": cfg.model,
        "weights_used": info.get("weights_used"),
        "limit": limit,
        "epochs": epochs,
        "epochs_run": info.get("epochs_run"),
        "best_epoch": info.get("best_epoch"),
        "n_train": split.get("train", {}).get("n"),
        "n_val": split.get("val", {}).get("n"),
        "threshold": info.get("threshold"),
        "threshold_policy": info.get("threshold_policy"),
        "temperature": info.get("temperature"),
        "ood_level": (info.get("ood") or {}).get("level"),
        "train_seconds": info.get("train_seconds"),
        "train_wall_s": round(train_wall, 2),
        "home": {
            "n": home.get("n"),
            "accuracy": home.get("accuracy"),
            "roc_auc": home.get("roc_auc"),
            "ece": home.get("ece"),
            "ece_equal_mass": home.get("ece_equal_mass"),
            "labels": home.get("labels"),  # per true class, the labels users get (FAKE / uncertain / REAL)
            "real_uncertain": share(home_real.get("fraction_uncertain")),
            "real_flagged_ood": share(home_real.get("fraction_flagged")),
            "arrays_match_run_metrics": home_arrays["accuracy"] == home.get("accuracy"),
        },
        "heldout": {
            "n_real": per_class["REAL"]["support"],
            "n_fake": per_class["FAKE"]["support"],
            "balanced_accuracy": round((recall["REAL"] + recall["FAKE"]) / 2, 6),
            "fakes_caught": recall["FAKE"],
            "real_kept": recall["REAL"],
            "roc_auc": m.get("roc_auc"),
            "ece": m.get("ece"),
            "ece_equal_mass": m.get("ece_equal_mass"),
            "labels": m.get("labels"),
            "fakes_flagged_ood": share(ood.get("fraction_flagged_fake")),
            "real_flagged_ood": share(ood.get("fraction_flagged_real")),
            "fakes_uncertain": share(fakes.get("fraction_uncertain")),
            "fakes_confidently_wrong": share(fakes.get("confidently_wrong")),
            "confidently_wrong_all": share(ood.get("confidently_wrong")),
            "evaluation": str(run.evaluation(heldout_dir).path.relative_to(run_dir)),
            "arrays_match_evaluate": arrays["accuracy"] == m.get("accuracy")
            and arrays["confusion_matrix"] == m.get("confusion_matrix"),
        },
    }


# ---------------------------------------------------------------- output


def pct(x: Any) -> str:
    return f"{100 * x:.2f}%" if isinstance(x, int | float) and math.isfinite(x) else "n/a"


def num(x: Any, fmt: str) -> str:
    return fmt.format(x) if isinstance(x, int | float) and math.isfinite(x) else "n/a"


def table(results: dict[str, Any]) -> str:
    """The rows as a Markdown table (what the README's "Generators it never saw" section shows)."""
    n = results["args"]["n_heldout"]
    head = [
        "method", "train images, epochs", "home test acc", f"{HELDOUT_NAME}: balanced acc", "fakes caught",
        "ROC AUC", "ECE", "fakes confidently REAL", "REAL test 'uncertain'", "fakes flagged OOD", "train s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results["methods"].values():
        h, g = r["home"], r["heldout"]
        lim = "all" if r["limit"] is None else f"limit {r['limit']:,}"
        lines.append("| " + " | ".join([
            f"{r['method']} ({r['note']})" if r["method"] != "fast" else "fast",
            f"{r['n_train']:,} ({lim}), {r['epochs_run']}",
            pct(h["accuracy"]), pct(g["balanced_accuracy"]), pct(g["fakes_caught"]), num(g["roc_auc"], "{:.4f}"),
            num(g["ece"], "{:.3f}"), pct(g["fakes_confidently_wrong"]), pct(h["real_uncertain"]),
            pct(g["fakes_flagged_ood"]), num(r["train_seconds"], "{:,.0f}"),
        ]) + " |")
    m = results["machine"]
    end = m.get("load_average_end")
    lines.append("")
    lines.append(
        f"{HELDOUT_NAME} = {n:,} FAKE of a generator family never trained on + {n:,} stand-in test/REAL, judged at "
        "each run's stored threshold (`realfake evaluate RUN --data ...`); 'uncertain' and OOD from the run's "
        "logit typicality (calibration.Typicality). Home = the stand-in's test split "
        "(a limited run's share of it)."
    )
    lines.append(
        f"machine: {m['cpu']}, {m['cores']} cores, GPU {m['gpu'] or 'none'}, torch threads {m['torch_threads']}, "
        f"load average {m['load_average_start'][0]:.1f} -> " + (f"{end[0]:.1f}" if end else "n/a")
        + " (shared machine: seconds are busy times)"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.generalization", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the stand-in zip (CIFAKE layout) to train on")
    p.add_argument("--heldout", type=Path, default=DEFAULT_HELDOUT, help="zip with FAKE/ of a held-out generator")
    p.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated: " + ", ".join(METHODS))
    p.add_argument("--limit", type=int, default=None,
                   help="stratified subset for every method (default: each method's own; fast: the whole zip, "
                   "seed-resnet50: 30,000)")
    p.add_argument("--epochs", type=int, default=3, help="epoch budget (fast-long: twice this)")
    p.add_argument("--seed", type=int, default=42, help="run seed, and the pick of held-out images")
    p.add_argument("--n-heldout", type=int, default=2000, help="held-out FAKE images, and as many stand-in REAL")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="realfake's data cache (default: a temporary folder, removed afterwards)")
    p.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--progress", action="store_true", help="show realfake's progress bars")
    a = p.parse_args(argv)
    a.methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    unknown = [m for m in a.methods if m not in METHODS]
    if unknown or not a.methods:
        p.error(f"--methods must name some of {', '.join(METHODS)}; unknown: {', '.join(unknown) or '(none given)'}")
    if a.limit is not None and a.limit < 10:
        p.error("--limit must be at least 10")
    if a.epochs < 1 or a.n_heldout < 1:
        p.error("--epochs and --n-heldout must be at least 1")
    return a


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark; returns the JSON file written."""
    args = parse_args(argv)
    for what, path in (("stand-in", args.data), ("held-out", args.heldout)):
        if not path.is_file():
            raise SystemExit(f"generalization: {what} data not found: {path} (pass --data/--heldout or set "
                             "REALFAKE_SHARED_DATA)")
    from realfake.errors import RealfakeError

    started = datetime.now(timezone.utc)
    path = result_path("generalization", args.out_dir)
    results: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.generalization", *(argv or sys.argv[1:])]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine_info(),
        "complete": False,
        "methods": {},
    }
    with tempfile.TemporaryDirectory(prefix="realfake-generalization-") as tmp, \
            cache_dir(args.cache_dir or Path(tmp) / "cache"):
        work = Path(tmp)
        try:
            heldout_dir = work / f"heldout-{HELDOUT_NAME}"
            results["heldout"] = build_heldout(args.data, args.heldout, args.n_heldout, args.seed, heldout_dir)
            for name in args.methods:
                results["methods"][name] = row = run_method(name, args, heldout_dir, work)
                log(f"{name}: home {pct(row['home']['accuracy'])}, {HELDOUT_NAME} balanced "
                    f"{pct(row['heldout']['balanced_accuracy'])}, caught {pct(row['heldout']['fakes_caught'])}")
                results["machine"]["load_average_end"] = list(os.getloadavg())
                atomic_write_json(path, results)
                shutil.rmtree(work / "runs" / name, ignore_errors=True)
        except RealfakeError as e:
            raise SystemExit(f"generalization: {e}") from None
    return write_final(path, results, started, table(results))


if __name__ == "__main__":
    main()
