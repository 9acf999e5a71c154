"""PROTOTYPE, not product code: which threshold policy and OOD level, for a trained run, on the held-out generator?

The policies and levels are all post-hoc (no retraining): this loads a trained run, recomputes its validation
and test logits, and for each `--threshold-policy` and OOD level reports the home test accuracy and, on 2,000
ganC fakes + 2,000 stand-in test/REAL images, fakes caught, REAL kept, balanced accuracy, ECE, the ganC fakes
left confidently REAL and the REAL test images labelled uncertain.

Run (from the repository root), on a run trained with `--protocol official` on the stand-in:

    python -m research.threshold_policy RUN

Measured on `fast`, full stand-in, 3 epochs (the run of benchmarks/generalization.py; AMD EPYC, 2 cores):

| policy | home test acc | ganC caught | REAL kept | balanced acc |
|---|---|---|---|---|
| balanced | 99.92% | 55.3% | 99.9% | 77.6% |
| fpr:0.02 | 98.69% | 98.5% | 96.9% | 97.7% |
| fpr:0.01 | 99.29% | 95.3% | 98.6% | 96.9% |
| fpr:0.005 | 99.54% | 92.5% | 99.2% | 95.9% |
| fpr:0.002 | 99.77% | 84.6% | 99.6% | 92.1% |
| fpr:0.001 | 99.88% | 73.4% | 99.8% | 86.6% |

| OOD level | REAL test uncertain | FAKE test uncertain | ganC fakes confidently REAL (balanced) |
|---|---|---|---|
| 0.95 | 6.2% | 4.6% | 0.30% |
| 0.96 | 4.9% | 3.8% | 0.55% |
| 0.97 | 4.0% | 2.9% | 0.85% |
| 0.98 | 2.7% | 1.9% | 1.50% |

ECE on the ganC set is 0.235 whatever the policy (the threshold does not move p). fpr:0.005 is the most that
stays within half a point of the home accuracy; it became `fast`'s recipe, and 0.96 the default OOD level.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("REALFAKE_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
POLICIES = ("balanced", "fpr:0.02", "fpr:0.01", "fpr:0.005", "fpr:0.002", "fpr:0.001")
LEVELS = (0.95, 0.96, 0.97, 0.98)


def main(run: str) -> None:
    from realfake.calibration import calibrate
    from realfake.config import RunConfig
    from realfake.data.cache import load_dataset
    from realfake.data.splits import make_split
    from realfake.detector import Detector
    from realfake.metrics import ece

    det = Detector.load(run, device="cpu")
    cfg = RunConfig.from_sources(Path(run) / "config.yaml")
    ds = load_dataset(cfg.data, cfg.limit, cfg.seed, None, False)
    split = make_split(ds.labels, ds.splits, cfg.protocol, cfg.seed, sources=ds.sources)
    zv, yv = det.predict_logits(np.asarray(ds.images[split["val"]])), ds.labels[split["val"]]
    zt, yt = det.predict_logits(np.asarray(ds.images[split["test"]])), ds.labels[split["test"]]
    zg = det.predict_logits(np.asarray(load_dataset(DATA / "ganC-fake.zip", None, 0, None, False).images[:2000]))
    zr = zt[yt == 0][:2000]
    both_y, both_z = np.r_[np.zeros(len(zr)), np.ones(len(zg))], np.r_[zr, zg]
    for policy in POLICIES:
        cal = calibrate(zv, yv, policy, None, det.calibration.tta)
        home = (cal.is_fake(cal.p_fake(zt)) == (yt == 1)).mean()
        caught, kept = cal.is_fake(cal.p_fake(zg)).mean(), (~cal.is_fake(cal.p_fake(zr))).mean()
        print(f"{policy:10s} home {home:.4f} caught {caught:.3f} REAL kept {kept:.3f} "
              f"balanced {(caught + kept) / 2:.3f} ece {ece(both_y, cal.p_fake(both_z)):.3f}")
    cal = calibrate(zv, yv, "balanced", None, det.calibration.tta)
    for level in LEVELS:
        c = replace(cal, ood=replace(cal.ood, level=level))
        ut = c.uncertain(c.p_fake(zt), c.ood_scores(zt))
        pg = c.p_fake(zg)
        wrong = (~c.is_fake(pg) & ~c.uncertain(pg, c.ood_scores(zg))).mean()
        print(f"level {level}: REAL test uncertain {ut[yt == 0].mean():.4f} FAKE test uncertain "
              f"{ut[yt == 1].mean():.4f} ganC confidently REAL {wrong:.4f}")


if __name__ == "__main__":
    main(sys.argv[1])
