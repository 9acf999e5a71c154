"""PROTOTYPE, measurement only: which calibration makes p_fake honest on a generator the model never saw?

For a trained run (`--protocol official` on the stand-in), it predicts the validation and test splits and a
held-out set (2,000 ganC fakes + 2,000 stand-in test/REAL, picked as benchmarks/generalization.py does), then,
for the threshold policy given, compares: temperature only (p = sigmoid(z / T), the threshold wherever the
policy puts it), centred (p = sigmoid((z - c) / T), c = the policy's cut as a logit: what `calibrate` stores
now), Platt scaling, and hotter temperatures. Prints threshold, home accuracy and ECE, ganC balanced accuracy
and ECE per variant.

    python -m research.centred_calibration RUN [POLICY=real:0.005]

Measured on a full-stand-in `fast` run (flips, 3 epochs; AMD EPYC, 2 cores), policy real:0.005: temperature
only: threshold p 0.0009, ganC ECE 0.2305, home ECE 0.0004; centred: ganC ECE 0.0414, home 0.0054, verdicts
identical (home 99.54%, ganC balanced 95.57% either way); Platt 0.179; T x2 / x3 / x5: 0.233 / 0.233 / 0.243
(centred: 0.050 / 0.076 / 0.139); centred with T refitted: 0.042.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from benchmarks.common import DEFAULT_DATA
from benchmarks.generalization import DEFAULT_HELDOUT, build_heldout
from scipy.special import logit
from sklearn.linear_model import LogisticRegression

from realfake.calibration import apply_temperature, choose_threshold, fit_temperature, sigmoid
from realfake.data.cache import load_dataset
from realfake.detector import Detector
from realfake.metrics import ece


def main(argv: list[str]) -> None:
    run, policy = Path(argv[0]), (argv[1] if len(argv) > 1 else "real:0.005")
    det = Detector.from_run(run, device="cpu")
    split = json.loads((run / "split.json").read_text())
    ds = load_dataset(DEFAULT_DATA, progress=False)
    z, y = {}, {}
    for k in ("val", "test"):
        idx = np.asarray(split[k])
        z[k], y[k] = det.predict_logits(ds.images[idx]), ds.labels[idx]
    with tempfile.TemporaryDirectory() as d:
        build_heldout(DEFAULT_DATA, DEFAULT_HELDOUT, 2000, 42, Path(d))
        h = load_dataset(d, progress=False, use_cache=False)
        z["ganC"], y["ganC"] = det.predict_logits(h.images), h.labels

    def report(name: str, f) -> float:  # noqa: ANN001 - a logits -> p map
        thr = choose_threshold(y["val"], f(z["val"]), policy)
        p_home, p_ho = f(z["test"]), f(z["ganC"])
        home = float(((p_home >= thr) == (y["test"] == 1)).mean())
        bal = 0.5 * float((p_ho[y["ganC"] == 1] >= thr).mean() + (p_ho[y["ganC"] == 0] < thr).mean())
        print(f"{name:22s} threshold {thr:.4f}  home acc {home:.4f} ECE {ece(y['test'], p_home):.4f}  "
              f"ganC balanced {bal:.4f} ECE {ece(y['ganC'], p_ho):.4f}")
        return thr

    t = fit_temperature(z["val"], y["val"])
    cut = t * float(logit(np.clip(report("temperature", lambda v: apply_temperature(v, t)), 1e-12, 1 - 1e-12)))
    report("centred", lambda v: sigmoid((v - cut) / t))
    platt = LogisticRegression(C=1e6).fit(z["val"][:, None], y["val"])
    report("platt", lambda v: platt.predict_proba(v[:, None])[:, 1])
    for m in (2, 3, 5):
        report(f"T x{m}", lambda v, m=m: apply_temperature(v, t * m))
        report(f"T x{m} centred", lambda v, m=m: sigmoid((v - cut) / (t * m)))


if __name__ == "__main__":
    main(sys.argv[1:])
