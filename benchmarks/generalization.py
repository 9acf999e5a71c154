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

`--lofo` (leave one family out) asks the same of the generator zoo, one family at a time: for each seed
(--seeds) and each family F of the zoo (--zoo FOLDER of trained generators, or the zoo packaged with realfake),
each method trains on the stand-in plus --zoo-n samples of every other family (`--extra-fakes`, training split
only), then is judged as above on --n-heldout samples of F (drawn with another seed than any training sample) +
as many stand-in test/REAL, and on ganC. Per fold: the labels users get on F's fakes and on the REAL photos, ROC
AUC, home accuracy; then per method the mean and the worst fold of each figure, over each seed and over all. It
writes benchmarks/results/generalization-lofo/<machine>-<date>-<commit>.json, rewritten after every fold.

Writes benchmarks/results/generalization/<machine>-<date>-<commit>.json atomically (rewritten after every method, so a
long run that is stopped keeps what it finished) and prints the Markdown table the README shows.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
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
    # --lofo only: no zoo fakes in training (one run per seed, judged on every family): what the zoo must beat.
    "recipe-no-zoo": {"overrides": {"model": "fast"}, "limit": None, "epochs_x": 1, "zoo": False,
                      "note": "fast's recipe trained on the stand-in alone (the baseline: no zoo fakes)"},
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


def copy_members(zip_path: Path, folder: tuple[str, ...], n: int, seed: int, target: Path) -> dict[str, Any]:
    """n images of `folder` in the zip, picked at random with `seed`, copied byte for byte into target."""
    with zipfile.ZipFile(zip_path) as zf:
        members = image_members(zf, folder)
        if len(members) < n:
            raise SystemExit(
                f"generalization: {zip_path} has {len(members)} {'/'.join(folder).upper()} images, "
                f"fewer than --n-heldout {n}"
            )
        chosen = sorted(np.random.default_rng(seed).choice(len(members), n, replace=False).tolist())
        target.mkdir(parents=True, exist_ok=True)
        for i in chosen:
            name = members[i]
            (target / f"{i:06d}-{Path(name).name}").write_bytes(zf.read(name))
    return {"from": str(zip_path), "folder": "/".join(folder), "n": n, "available": len(members)}


def build_heldout(data: Path, heldout: Path, n: int, seed: int, out: Path) -> dict[str, Any]:
    """out/REAL/standin-test/* (n of the stand-in's test/REAL) and out/FAKE/ganC/* (n held-out fakes), copied
    byte for byte from the zips; the picks are random with `seed`. The sub-folders name each image's source."""
    return {"REAL": copy_members(data, ("test", "real"), n, seed, out / "REAL" / "standin-test"),
            "FAKE": copy_members(heldout, ("fake",), n, seed, out / "FAKE" / HELDOUT_NAME)}


# ---------------------------------------------------------------- one method


def share(x: Any) -> float | None:
    return None if x is None else float(x)


def train_method(name: str, args: argparse.Namespace, run_dir: Path, seed: int,
                 extra_fakes: Path | None = None) -> tuple[Any, float]:
    """Train one method on the stand-in into run_dir (with --extra-fakes when given); its config and wall time."""
    from realfake import training
    from realfake.config import RunConfig

    spec = METHODS[name]
    limit = args.limit if args.limit is not None else spec["limit"]
    epochs = args.epochs * spec["epochs_x"]
    extra = {} if extra_fakes is None else {"extra_fakes": str(extra_fakes),
                                            "extra_fakes_share": args.extra_fakes_share}
    cfg = RunConfig(
        data=str(args.data), protocol="official", seed=seed, limit=limit, epochs=epochs, device=args.device,
        out=str(run_dir), **spec["overrides"], **extra,
    )
    log(f"{run_dir.name}: training ({cfg.model}, limit {limit or 'none'}, {epochs} epochs)")
    t = time.perf_counter()
    training.train(cfg, progress=args.progress, log=lambda m: log(f"{run_dir.name}: {m}"))
    return cfg, time.perf_counter() - t


def home_figures(run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The run's own test-split figures, plus 'uncertain' among its REAL test images (through its Detector)."""
    from realfake.evaluation import evaluation_inputs
    from realfake.metrics import calibration_metrics, compute_metrics
    from realfake.rundir import RunDir

    home = RunDir(run_dir).read_json(RunDir.METRICS)
    det, ds, idx, _ = evaluation_inputs(run_dir, None, device=args.device, progress=False, log=lambda m: None)
    cal = det.calibration
    y_home = ds.labels[idx]
    z_home = det.predict_logits(np.asarray(ds.images[idx]))
    home_arrays = compute_metrics(y_home, cal.p_fake(z_home), cal.threshold)
    home_real = calibration_metrics(y_home[y_home == 0], z_home[y_home == 0], cal).get("ood", {})
    return {
        "n": home.get("n"),
        "accuracy": home.get("accuracy"),
        "roc_auc": home.get("roc_auc"),
        "ece": home.get("ece"),
        "ece_equal_mass": home.get("ece_equal_mass"),
        "labels": home.get("labels"),  # per true class, the labels users get (FAKE / uncertain / REAL)
        "real_uncertain": share(home_real.get("fraction_uncertain")),
        "real_flagged_ood": share(home_real.get("fraction_flagged")),
        "arrays_match_run_metrics": home_arrays["accuracy"] == home.get("accuracy"),
    }


def judge(run_dir: Path, heldout_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The run on a held-out folder, the user's path (`realfake evaluate RUN --data HELDOUT`), plus the per-class
    figures metrics.json does not split, from the same run's Detector (see the module docstring)."""
    from realfake.evaluation import evaluate, evaluation_inputs
    from realfake.metrics import calibration_metrics, compute_metrics
    from realfake.rundir import RunDir

    quiet = {"progress": False, "log": lambda m: None}
    log(f"{run_dir.name}: evaluating on {heldout_dir.name}")
    m = evaluate(run_dir, heldout_dir, device=args.device, **quiet)
    det, ds, idx, _ = evaluation_inputs(run_dir, heldout_dir, device=args.device, **quiet)
    y = ds.labels[idx]
    z = det.predict_logits(np.asarray(ds.images[idx]))
    arrays = compute_metrics(y, det.calibration.p_fake(z), det.calibration.threshold)
    fakes = calibration_metrics(y[y == 1], z[y == 1], det.calibration).get("ood", {})
    per_class = m["per_class"]
    recall = {c: per_class[c]["recall"] for c in ("REAL", "FAKE")}
    ood = m.get("ood", {})
    return {
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
        "evaluation": str(RunDir(run_dir).evaluation(heldout_dir).path.relative_to(run_dir)),
        "arrays_match_evaluate": arrays["accuracy"] == m.get("accuracy")
        and arrays["confusion_matrix"] == m.get("confusion_matrix"),
    }


def run_facts(name: str, cfg: Any, run_dir: Path, train_wall: float) -> dict[str, Any]:
    """What a row says about how its run was trained (run.json and the data report)."""
    from realfake.rundir import RunDir

    spec = METHODS[name]
    run = RunDir(run_dir)
    info, report = run.info(), run.read_json(RunDir.DATA_REPORT)
    split = report.get("split", {})
    return {
        "method": name,
        "note": spec["note"],
        "overrides": spec["overrides"],
        "model": cfg.model,
        "weights_used": info.get("weights_used"),
        "limit": cfg.limit,
        "epochs": cfg.epochs,
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
    }


def run_method(name: str, args: argparse.Namespace, heldout_dir: Path, work: Path) -> dict[str, Any]:
    """Train one method on the stand-in, then its home and held-out figures (see the module docstring)."""
    run_dir = work / "runs" / name
    cfg, train_wall = train_method(name, args, run_dir, args.seed)
    log(f"{name}: evaluating on {heldout_dir.name} (REAL {args.n_heldout} + FAKE {args.n_heldout})")
    return {**run_facts(name, cfg, run_dir, train_wall), "home": home_figures(run_dir, args),
            "heldout": judge(run_dir, heldout_dir, args)}


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


# ---------------------------------------------------------------- leave one family out (--lofo)


LOFO_HELDOUT_SEED = 10_000  # a family's held-out fakes: seed 10,000 + the run's, never the training samples' draw
# Each fold's figures and which way is worse (the "worst fold" picks that end).
LOFO_FIGURES: dict[str, Any] = {
    "fakes_labelled_fake": min, "fakes_uncertain": max, "fakes_labelled_real": max, "roc_auc": min,
    "real_labelled_fake": max, "real_uncertain": max, "home_accuracy": min,
    "ganc_fakes_labelled_fake": min, "ganc_roc_auc": min,
}


def lofo_members(args: argparse.Namespace) -> list[Any]:
    """The zoo's generators: --zoo's folder of trained ones, or the packaged zoo; two families at least."""
    from realfake.errors import RealfakeError
    from realfake.zoo.builtin import builtin_zoo, generators_in

    members = generators_in(args.zoo) if args.zoo is not None else builtin_zoo()
    if args.zoo is not None and not members:
        raise RealfakeError(f"--zoo {args.zoo} holds no trained generators (generator.safetensors or "
                            "<family>.safetensors)")
    if len(members) < 2:
        raise RealfakeError(f"--lofo needs two generator families at least; the zoo has {len(members)}")
    return members


def sample_family(member: Any, n: int, seed: int, work: Path) -> Path:
    """n fakes of one family (JPEG q75, as `zoo sample` writes them), sampled once into the work folder."""
    from realfake.zoo.extras import zoo_extras

    return zoo_extras([member], "lofo", n, seed, root=work / "zoo-cache").folder / "FAKE" / member.family


def link_tree(src: Path, dst: Path) -> int:
    """Every file of src linked (or copied) into dst; how many."""
    from realfake.zoo.extras import link_or_copy

    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(f for f in src.iterdir() if f.is_file())
    for f in files:
        link_or_copy(f, dst / f.name)
    return len(files)


def label_share(labels: Any, true_class: str, verdict: str) -> float | None:
    """Of the images of a true class, the share given `verdict` (metrics.json's `labels`)."""
    return (((labels or {}).get(true_class) or {}).get("shares") or {}).get(verdict)


def fold_figures(home: dict[str, Any], held: dict[str, Any], ganc: dict[str, Any]) -> dict[str, Any]:
    from realfake.metrics import UNCERTAIN

    return {
        "fakes_labelled_fake": label_share(held["labels"], "FAKE", "FAKE"),
        "fakes_uncertain": label_share(held["labels"], "FAKE", UNCERTAIN),
        "fakes_labelled_real": label_share(held["labels"], "FAKE", "REAL"),
        "roc_auc": held["roc_auc"],
        "real_labelled_fake": label_share(held["labels"], "REAL", "FAKE"),
        "real_uncertain": label_share(held["labels"], "REAL", UNCERTAIN),
        "home_accuracy": home["accuracy"],
        "ganc_fakes_labelled_fake": label_share(ganc["labels"], "FAKE", "FAKE"),
        "ganc_roc_auc": ganc["roc_auc"],
    }


def summarise_folds(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the mean over the folds and the worst fold (which family held out, which seed)."""
    out: dict[str, Any] = {"n_folds": len(rows), "mean": {}, "worst": {}}
    for key, worse in LOFO_FIGURES.items():
        vals = [(r["figures"][key], r) for r in rows if isinstance(r["figures"].get(key), int | float)]
        if not vals:
            out["mean"][key] = out["worst"][key] = None
            continue
        out["mean"][key] = round(sum(v for v, _ in vals) / len(vals), 6)
        v, r = worse(vals, key=lambda t: t[0])
        out["worst"][key] = {"value": v, "heldout_family": r["heldout_family"], "seed": r["seed"]}
    return out


def lofo_summary(folds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per method: over every fold and seed (`all`: its worst is the worst over seeds too), and per seed."""
    out: dict[str, Any] = {}
    for method in dict.fromkeys(r["method"] for r in folds.values()):
        rows = [r for r in folds.values() if r["method"] == method]
        seeds = dict.fromkeys(r["seed"] for r in rows)
        out[method] = {"all": summarise_folds(rows),
                       "per_seed": {str(s): summarise_folds([r for r in rows if r["seed"] == s]) for s in seeds}}
    return out


def run_fold(method: str, args: argparse.Namespace, seed: int, family: str, extras: Path, held: Path,
             ganc: Path, work: Path, baselines: dict[Path, tuple[Any, float]]) -> dict[str, Any]:
    """One method trained on the stand-in + every zoo family but `family`, judged on `family`'s fakes and ganC.

    A method without the zoo (`"zoo": False`) is the same run for every family of a seed: trained once, kept in
    `baselines` (run folder -> config and training time), judged on each family.
    """
    from realfake.rundir import RunDir

    if METHODS[method].get("zoo", True):
        run_dir = work / "runs" / f"{method}-s{seed}-{family}"
        cfg, train_wall = train_method(method, args, run_dir, seed, extras)
    else:
        run_dir = work / "runs" / f"{method}-s{seed}"
        if run_dir not in baselines:
            baselines[run_dir] = train_method(method, args, run_dir, seed)
        cfg, train_wall = baselines[run_dir]
    run = RunDir(run_dir)
    report = run.read_json(RunDir.DATA_REPORT)
    sources = {k: sorted(report.get("split_sources", {}).get(k, {})) for k in ("train", "val", "test")}
    home, held_fig, ganc_fig = home_figures(run_dir, args), judge(run_dir, held, args), judge(run_dir, ganc, args)
    row = {
        **run_facts(method, cfg, run_dir, train_wall),
        "seed": seed,
        "heldout_family": family,
        "trained_families": sorted((run.info().get("extra_fakes") or {}).get("per_family", {})),
        "extra_fakes": {k: (run.info().get("extra_fakes") or {}).get(k)
                        for k in ("n_used", "share", "per_family", "n_available")},
        "split_sources": sources,
        "heldout_in_training": family in sources["train"] or family in sources["val"],
        "home": home,
        "heldout": held_fig,
        HELDOUT_NAME: ganc_fig,
        "run": str(run_dir) if args.work_dir is not None else None,
    }
    row["figures"] = fold_figures(home, held_fig, ganc_fig)
    return row


def main_lofo(args: argparse.Namespace, work: Path, path: Path, results: dict[str, Any]) -> None:
    """Leave one family out: per seed and family F, every method trained with the other families' samples as
    --extra-fakes, judged on F's held-out samples and on ganC; the JSON rewritten after every fold."""
    members = lofo_members(args)
    families = [m.family for m in members]
    results["lofo"] = {
        "families": families,
        "zoo": str(args.zoo.resolve()) if args.zoo is not None else "packaged",
        "generators": {m.family: {"path": str(m.path), "sha256": m.sha256(), "steps": m.info.steps}
                       for m in members},
        "zoo_n": args.zoo_n, "extra_fakes_share": args.extra_fakes_share, "heldout_seed": "10000 + seed",
        "folds": {}, "summary": {},
    }
    baselines: dict[Path, tuple[Any, float]] = {}
    for seed in args.seeds:
        ganc = work / f"heldout-{HELDOUT_NAME}-s{seed}"
        results["heldout"][str(seed)] = build_heldout(args.data, args.heldout, args.n_heldout, seed, ganc)
        train_samples = {m.family: sample_family(m, args.zoo_n, seed, work) for m in members}
        held_samples = {m.family: sample_family(m, args.n_heldout, LOFO_HELDOUT_SEED + seed, work) for m in members}
        for family in families:
            fold = work / "folds" / f"s{seed}-{family}"
            for other in families:
                if other != family:
                    link_tree(train_samples[other], fold / "extra-fakes" / "FAKE" / other)
            held = fold / f"heldout-{family}"
            link_tree(ganc / "REAL" / "standin-test", held / "REAL" / "standin-test")
            link_tree(held_samples[family], held / "FAKE" / family)
            for method in args.methods:
                row = run_fold(method, args, seed, family, fold / "extra-fakes", held, ganc, work, baselines)
                results["lofo"]["folds"][f"{method}/s{seed}/{family}"] = row
                results["lofo"]["summary"] = lofo_summary(results["lofo"]["folds"])
                f = row["figures"]
                log(f"{method} s{seed} without {family}: {family} fakes labelled FAKE {pct(f['fakes_labelled_fake'])}, "
                    f"AUC {num(f['roc_auc'], '{:.4f}')}; home {pct(f['home_accuracy'])}")
                results["machine"]["load_average_end"] = list(os.getloadavg())
                atomic_write_json(path, results)
                if args.work_dir is None:
                    shutil.rmtree(work / "runs" / f"{method}-s{seed}-{family}", ignore_errors=True)
        if args.work_dir is None:
            for method in args.methods:
                shutil.rmtree(work / "runs" / f"{method}-s{seed}", ignore_errors=True)


def lofo_table(results: dict[str, Any]) -> str:
    """Per fold, then per method the mean and the worst fold, as Markdown."""
    head = ["method", "seed", "held out", "its fakes: FAKE", "uncertain", "REAL", "ROC AUC", "REAL photos: FAKE",
            "uncertain", "home acc", f"{HELDOUT_NAME} fakes: FAKE", f"{HELDOUT_NAME} AUC"]
    keys = list(LOFO_FIGURES)
    fmt = {k: (lambda v: num(v, "{:.4f}")) if k.endswith("auc") else pct for k in keys}
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lofo = results["lofo"]
    for r in lofo["folds"].values():
        lines.append("| " + " | ".join([r["method"], str(r["seed"]), r["heldout_family"],
                                         *(fmt[k](r["figures"][k]) for k in keys)]) + " |")
    for method, summ in lofo["summary"].items():
        a = summ["all"]
        lines.append("| " + " | ".join([f"**{method}: mean**", "all", f"{a['n_folds']} folds",
                                         *(fmt[k](a["mean"][k]) for k in keys)]) + " |")
        lines.append("| " + " | ".join([f"**{method}: worst**", "all", "(family, seed)", *(
            "n/a" if a["worst"][k] is None else
            f"{fmt[k](a['worst'][k]['value'])} ({a['worst'][k]['heldout_family']}, {a['worst'][k]['seed']})"
            for k in keys)]) + " |")
    lines += ["", f"Leave one family out: each fold trains on the stand-in plus {lofo['zoo_n']:,} samples of every "
              "zoo family but one (--extra-fakes, share "
              f"{lofo['extra_fakes_share']:g}), then judges {results['args']['n_heldout']:,} samples of the "
              f"family left out (another seed) + as many stand-in test/REAL, and {HELDOUT_NAME}, as "
              "`realfake evaluate` does. Shares are of the labels users get (FAKE / uncertain / REAL)."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.generalization", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the stand-in zip (CIFAKE layout) to train on")
    p.add_argument("--heldout", type=Path, default=DEFAULT_HELDOUT, help="zip with FAKE/ of a held-out generator")
    p.add_argument("--methods", default=None, help="comma-separated: " + ", ".join(METHODS)
                   + f" [default: {DEFAULT_METHODS}; with --lofo: fast]")
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
    p.add_argument("--lofo", action="store_true",
                   help="leave one zoo family out: per family F, train with every other family's samples as "
                   "--extra-fakes, judge F's fakes and ganC")
    p.add_argument("--zoo", type=Path, default=None,
                   help="--lofo: folder of trained generators (default: the zoo packaged with realfake)")
    p.add_argument("--zoo-n", type=int, default=1000,
                   help="--lofo: training samples per family (ddpm: at most what realfake.zoo.extras caps it to)")
    p.add_argument("--extra-fakes-share", type=float, default=0.5,
                   help="--lofo: share of the training FAKE images taken by the other families' samples")
    p.add_argument("--seeds", default=None, help="--lofo: comma-separated run seeds (default: --seed)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="keep samples, held-out sets and runs in this folder (default: a temporary one, removed)")
    a = p.parse_args(argv)
    a.methods = [m.strip() for m in (a.methods or ("fast" if a.lofo else DEFAULT_METHODS)).split(",") if m.strip()]
    if not a.lofo and (a.zoo is not None or a.seeds is not None):
        p.error("--zoo and --seeds go with --lofo")
    try:
        a.seeds = [int(x) for x in a.seeds.split(",") if x.strip()] if a.seeds else [a.seed]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers; got {a.seeds!r}")
    if len(set(a.seeds)) != len(a.seeds) or not a.seeds:
        p.error("--seeds must name distinct seeds")
    if a.zoo_n < 1 or not 0 < a.extra_fakes_share <= 1:
        p.error("--zoo-n must be at least 1 and --extra-fakes-share in (0, 1]")
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
    path = result_path("generalization-lofo" if args.lofo else "generalization", args.out_dir)
    results: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.generalization", *(argv or sys.argv[1:])]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine_info(),
        "complete": False,
        "methods": {},
    }
    with work_folder(args.work_dir) as work, cache_dir(args.cache_dir or work / "cache"):
        if args.lofo:
            results["heldout"] = {}
            try:
                main_lofo(args, work, path, results)
            except RealfakeError as e:
                raise SystemExit(f"generalization: {e}") from None
            return write_final(path, results, started, lofo_table(results))
        try:
            heldout_dir = work / f"heldout-{HELDOUT_NAME}"
            results["heldout"] = build_heldout(args.data, args.heldout, args.n_heldout, args.seed, heldout_dir)
            for name in args.methods:
                results["methods"][name] = row = run_method(name, args, heldout_dir, work)
                log(f"{name}: home {pct(row['home']['accuracy'])}, {HELDOUT_NAME} balanced "
                    f"{pct(row['heldout']['balanced_accuracy'])}, caught {pct(row['heldout']['fakes_caught'])}")
                results["machine"]["load_average_end"] = list(os.getloadavg())
                atomic_write_json(path, results)
                if args.work_dir is None:
                    shutil.rmtree(work / "runs" / name, ignore_errors=True)
        except RealfakeError as e:
            raise SystemExit(f"generalization: {e}") from None
    return write_final(path, results, started, table(results))


@contextlib.contextmanager
def work_folder(keep: Path | None) -> Iterator[Path]:
    """--work-dir (kept), or a temporary folder removed afterwards."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="realfake-generalization-") as tmp:
        yield Path(tmp)


if __name__ == "__main__":
    main()
