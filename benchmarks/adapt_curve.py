"""How many labelled images of a new generator does `realfake adapt` need? `python -m benchmarks.adapt_curve --run RUN`.

The held-out generator is ganC (`ganC-fake.zip`, FAKE only, never trained on), paired with the stand-in's
`test/REAL` (never trained on with `--protocol official`). A seeded draw sets aside `--n-eval` images of each
class for evaluation; from the rest, for each n in `--sizes`, n/2 REAL + n/2 FAKE are drawn (same seed) and the
run is adapted on them twice: calibration only, and `--finetune-head` (half of the n fine-tunes, half
calibrates). Every child, and the parent itself (n = 0), is then judged on the same evaluation images:
- balanced accuracy at the stored threshold (REAL and FAKE recall averaged; 'uncertain' is not a verdict
  here, the threshold alone decides);
- ROC AUC of the calibrated p_fake (calibration alone cannot change it: a check);
- ECE (15 bins) of the calibrated p_fake;
- confidently wrong: the share of images whose label is the wrong class (not 'uncertain');
- REAL uncertain / FAKE uncertain: the share of each class labelled 'uncertain' (OOD score or band);
- FAKE passed: the share of ganC fakes labelled REAL (not uncertain): what a user would wrongly trust.

Writes benchmarks/results/adapt/<machine>-<date>-<commit>.json (atomically) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import DEFAULT_DATA, RESULTS, atomic_write_json, machine_info, result_path

DEFAULT_GANC = DEFAULT_DATA.parent / "ganC-fake.zip"
MODES = ("calibration", "finetune-head")


def log(msg: str) -> None:
    print(f"[adapt {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_pool(ganc: Path, standin: Path) -> tuple[np.ndarray, np.ndarray]:
    """(REAL images, FAKE images): the stand-in's test/REAL and every ganC fake, decoded (ganC through the cache)."""
    from realfake.data.cache import decode_items, load_dataset
    from realfake.data.sources import open_source

    fakes = load_dataset(ganc, progress=False)
    fake = np.asarray(fakes.images)[fakes.labels == 1]
    source = open_source(standin)
    items = [it for it in source.items() if it.split == "test" and it.label == 0]
    real, errors = decode_items(source, items, progress=False)
    return real[[e is None for e in errors]], fake


def figures(detector: Any, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The figures of one detector on the evaluation images (verdicts through its own calibration)."""
    from realfake.metrics import compute_metrics, ece, rounded

    cal = detector.calibration
    z = detector.predict_logits(images)
    p = cal.p_fake(z)
    said_fake = cal.is_fake(p)
    unsure = cal.uncertain(p, cal.ood_scores(z))
    real, fake = labels == 0, labels == 1
    wrong = said_fake != fake
    return {
        "balanced_accuracy": rounded((said_fake[fake].mean() + (~said_fake[real]).mean()) / 2),
        "roc_auc": compute_metrics(labels, p, cal.threshold)["roc_auc"],
        "ece": rounded(ece(labels, p)),
        "confidently_wrong": rounded((wrong & ~unsure).mean()),
        "real_uncertain": rounded(unsure[real].mean()),
        "fake_uncertain": rounded(unsure[fake].mean()),
        "fake_passed": rounded((~said_fake[fake] & ~unsure[fake]).mean()),
        "temperature": round(cal.temperature, 4),
        "threshold": round(cal.threshold, 6),
    }


def measure(run: Path, real: np.ndarray, fake: np.ndarray, sizes: list[int], n_eval: int, seed: int,
            epochs: int, work: Path) -> list[dict[str, Any]]:
    from realfake.adapt import AdaptOptions, adapt_arrays
    from realfake.detector import Detector

    rng = np.random.default_rng(seed)
    real_order, fake_order = rng.permutation(len(real)), rng.permutation(len(fake))
    if max(sizes) // 2 + n_eval > min(len(real), len(fake)):
        raise SystemExit(f"not enough images: {len(real)} REAL, {len(fake)} FAKE for {n_eval} + {max(sizes) // 2}")
    eval_images = np.concatenate([real[real_order[:n_eval]], fake[fake_order[:n_eval]]])
    eval_labels = np.repeat([0, 1], n_eval)
    pool_real, pool_fake = real_order[n_eval:], fake_order[n_eval:]

    rows = [{"n": 0, "mode": "parent", **figures(Detector.load(run, device="cpu"), eval_images, eval_labels)}]
    log(f"parent: {rows[-1]}")
    for n in sizes:
        pick = np.random.default_rng([seed, n])
        r, f = pick.choice(pool_real, n // 2, replace=False), pick.choice(pool_fake, n - n // 2, replace=False)
        images, labels = np.concatenate([real[r], fake[f]]), np.repeat([0, 1], [len(r), len(f)])
        for mode in MODES:
            start = time.perf_counter()
            options = AdaptOptions(finetune_head=mode == "finetune-head", epochs=epochs, seed=seed, device="cpu")
            child = adapt_arrays(run, images, labels, f"ganC+REAL n={n}", work / f"{mode}-{n}", options,
                                 log=lambda m: None)
            seconds = time.perf_counter() - start
            rows.append({"n": n, "mode": mode, "adapt_seconds": round(seconds, 2),
                         **figures(Detector.load(child, device="cpu"), eval_images, eval_labels)})
            log(f"{mode} n={n}: {rows[-1]}")
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| n | adapted | balanced acc. | ROC AUC | ECE | confidently wrong | REAL uncertain | FAKE uncertain "
            "| FAKE passed as REAL |")
    lines = [head, "|" + "---|" * 9]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    for r in rows:
        auc = "n/a" if r["roc_auc"] is None else f"{r['roc_auc']:.4f}"
        lines.append(f"| {r['n']} | {r['mode']} | {pct(r['balanced_accuracy'])} | {auc} | {r['ece']:.3f} | "
                     f"{pct(r['confidently_wrong'])} | {pct(r['real_uncertain'])} | {pct(r['fake_uncertain'])} | "
                     f"{pct(r['fake_passed'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a trained run (never trained on ganC)")
    ap.add_argument("--ganc", type=Path, default=DEFAULT_GANC, help="the held-out generator's fakes")
    ap.add_argument("--standin", type=Path, default=DEFAULT_DATA, help="zip whose test/REAL gives the REAL images")
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000], help="labelled images to adapt on")
    ap.add_argument("--n-eval", type=int, default=2000, help="evaluation images per class, disjoint from adapting")
    ap.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs for --finetune-head")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=RESULTS, help="results folder (the JSON goes in its adapt/)")
    args = ap.parse_args(argv)

    started = datetime.now(timezone.utc)
    log("decoding ganC fakes and the stand-in's test/REAL")
    real, fake = load_pool(args.ganc, args.standin)
    with tempfile.TemporaryDirectory(prefix="adapt-curve-") as work:
        rows = measure(args.run, real, fake, args.sizes, args.n_eval, args.seed, args.epochs, Path(work))
    from realfake.rundir import RunDir

    parent = RunDir(args.run)
    results = {
        "benchmark": "adapt_curve",
        "started": started.isoformat(timespec="seconds"),
        "run": str(args.run.resolve()),
        "run_config": {k: v for k, v in parent.config().model_dump().items()
                       if k in ("model", "data", "protocol", "limit", "epochs", "seed", "threshold_policy")},
        "data": {"fake": str(args.ganc), "real": f"{args.standin}::test/REAL", "n_eval_per_class": args.n_eval,
                 "pool": {"REAL": len(real), "FAKE": len(fake)}},
        "seed": args.seed,
        "finetune_epochs": args.epochs,
        "machine": {**machine_info(), "load_average_end": list(os.getloadavg())},
        "rows": rows,
    }
    path = result_path("adapt", args.out_dir)
    atomic_write_json(path, results)
    print(table(rows))
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
