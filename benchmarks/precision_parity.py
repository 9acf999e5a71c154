"""A trained run's test split predicted in fp32 and in bf16: `python -m benchmarks.precision_parity RUN --out F`.

What it answers: does computing in bf16 change a trained model's verdicts? Accuracy and ROC AUC at each precision
(with the run's calibration), how many verdicts differ, and how far the logits move; seconds per precision on
this machine (busy or not: the load is recorded). Training in bf16 is a separate question (`benchmarks.run
--precisions fp32,bf16` trains at each). The run folder is only read; the JSON goes to --out.

`fused_vs_unfused` asks the same of prediction's folded and fused copy (realfake.models.fused), at each
precision: the Detector's logits against the plain model's (its weights in the precision's dtype, under the same
autocast, as prediction ran before the copy existed): verdicts changed, how far the logits move, and how far
each is from the plain fp32 model's.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine_info, result_path, write_final


def _unfused_logits(det: Any, images: np.ndarray) -> np.ndarray:
    """The run's plain model, conv/linear weights in the precision's dtype, through the same predict_logits."""
    import copy

    from realfake.infer import predict_logits
    from realfake.models.fused import hold_weights_in

    backend = det.backend
    model = hold_weights_in(copy.deepcopy(backend.model).eval(), backend.precision.dtype)
    return np.asarray(predict_logits(model, images, backend.device, tta=backend.tta, precision=backend.precision),
                      dtype=np.float64)


def parity(run_dir: Path, device: str = "cpu") -> dict[str, Any]:
    from realfake.data.splits import split_from_json
    from realfake.detector import Detector
    from realfake.evaluation import run_data
    from realfake.metrics import compute_metrics
    from realfake.rundir import RunDir

    run = RunDir(run_dir)
    ds = run_data(run.config(), progress=False, log=lambda m: print(m, file=sys.stderr))
    idx = split_from_json(run.read_json(RunDir.SPLIT), len(ds))["test"]
    images, labels = np.asarray(ds.images[idx]), ds.labels[idx]
    out: dict[str, Any] = {"run": str(run_dir), "n": int(len(idx)), "by_precision": {}}
    logits, verdicts, plain = {}, {}, {}
    fused: dict[str, Any] = {}
    for precision in ("fp32", "bf16"):
        det = Detector.from_run(run.path, device=device, precision=precision)
        t = time.perf_counter()
        z = det.predict_logits(images)
        seconds = time.perf_counter() - t
        cal = det.calibration
        p = cal.p_fake(z)
        m = compute_metrics(labels, p, cal.threshold)
        logits[precision], verdicts[precision] = z, p >= cal.threshold
        out["by_precision"][precision] = {
            "accuracy": m["accuracy"], "roc_auc": m["roc_auc"], "predict_seconds": round(seconds, 2),
            **det.backend.precision.to_info(),  # type: ignore[attr-defined]  # a TorchBackend
        }
        plain[precision] = _unfused_logits(det, images)
        unfused_verdicts = cal.p_fake(plain[precision]) >= cal.threshold
        d = np.abs(z - plain[precision])
        fused[precision] = {
            "layers": det.backend.fusion,  # type: ignore[attr-defined]
            "verdicts_differ": int((verdicts[precision] != unfused_verdicts).sum()),
            "accuracy_fused": m["accuracy"],
            "accuracy_unfused": float((unfused_verdicts == (labels == 1)).mean()),
            "max_abs_logit_diff": float(d.max()), "mean_abs_logit_diff": float(d.mean()),
        }
    for precision, f in fused.items():  # how far each path is from the plain fp32 model
        f["mean_abs_diff_to_unfused_fp32"] = {"fused": float(np.abs(logits[precision] - plain["fp32"]).mean()),
                                             "unfused": float(np.abs(plain[precision] - plain["fp32"]).mean())}
    out["fused_vs_unfused"] = fused
    diff = np.abs(logits["bf16"] - logits["fp32"])
    out.update(
        accuracy_points_bf16_minus_fp32=round(
            100 * (out["by_precision"]["bf16"]["accuracy"] - out["by_precision"]["fp32"]["accuracy"]), 4),
        verdicts_differ=int((verdicts["bf16"] != verdicts["fp32"]).sum()),
        max_abs_logit_diff=float(diff.max()),
        mean_abs_logit_diff=float(diff.mean()),
        fp32_logit_range=float(np.ptp(logits["fp32"])),
    )
    return out


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m benchmarks.precision_parity", description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a trained run directory (only read)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None,
                   help="the JSON file to write (default: results/precision-parity/MACHINE-DATE-COMMIT.json)")
    args = p.parse_args(argv)
    args.out = args.out or result_path("precision-parity")
    started = datetime.now(timezone.utc)
    results = {"date": started.isoformat(timespec="seconds"), "machine": machine_info(),
               **parity(args.run, args.device)}
    write_final(args.out, results, started)
    return args.out


if __name__ == "__main__":
    main()
