"""A trained run's fp32 and int8 ONNX files on its test split: `python -m benchmarks.int8_parity RUN [RUN ...] --out F`.

What it answers, per run: does `realfake export --quantize int8` keep the verdicts (test accuracy of each file at
the run's threshold, label agreement, how far the logits move), and is it faster on this machine (images/s of
each file through ONNX Runtime with the torch thread count, timed in turn, best of `--rounds`)? The bench's int8
row (`benchmarks.run --int8-models`) times files of its own quick runs, whose accuracy says little; this takes
runs trained properly. Both files are written to a temporary folder: the run folder is only read.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine_info, result_path, write_final


def parity(run_dir: Path, batch: int = 512, rounds: int = 3) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    from realfake.data.splits import split_from_json
    from realfake.evaluation import run_data
    from realfake.export import export_onnx
    from realfake.onnxfile import INPUT_NAME, LOGIT_NAME, OUTPUT_NAME
    from realfake.rundir import RunDir

    run = RunDir(run_dir)
    ds = run_data(run.config(), progress=False, log=lambda m: print(m, file=sys.stderr))
    idx = split_from_json(run.read_json(RunDir.SPLIT), len(ds))["test"]
    images, labels = np.ascontiguousarray(ds.images[idx]), ds.labels[idx]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="realfake-int8-parity-") as tmp:
        paths = {"fp32": export_onnx(run.path, Path(tmp) / "model.onnx"),
                 "int8": export_onnx(run.path, Path(tmp) / "model.int8.onnx", quantize="int8")}
        sessions = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
        sizes = {k: p.stat().st_size for k, p in paths.items()}
    threshold = float(sessions["fp32"].get_modelmeta().custom_metadata_map["threshold"])
    p_fake, logit = {}, {}
    for k, s in sessions.items():
        p_fake[k], logit[k] = s.run([OUTPUT_NAME, LOGIT_NAME], {INPUT_NAME: images})
    fake = {k: p >= threshold for k, p in p_fake.items()}
    x = images[:batch]
    speed: dict[str, float] = {}
    for _ in range(rounds):  # in turn, each keeping its best: a burst of load hits both files alike
        for k, s in sessions.items():
            s.run(None, {INPUT_NAME: x})
            t = time.perf_counter()
            s.run(None, {INPUT_NAME: x})
            speed[k] = max(speed.get(k, 0.0), len(x) / (time.perf_counter() - t))
    diff = np.abs(logit["int8"] - logit["fp32"])
    accuracy = {k: float((f == (labels == 1)).mean()) for k, f in fake.items()}
    return {
        "run": str(run_dir), "model": run.config().model, "n": int(len(idx)), "threads": opts.intra_op_num_threads,
        "batch": int(len(x)),
        "by_file": {k: {"test_accuracy": accuracy[k], "images_per_s": round(speed[k], 1), "bytes": sizes[k]}
                    for k in sessions},
        "accuracy_points_int8_minus_fp32": round(100 * (accuracy["int8"] - accuracy["fp32"]), 4),
        "label_agreement": float((fake["int8"] == fake["fp32"]).mean()),
        "max_abs_logit_diff": float(diff.max()),
        "fp32_logit_std": float(np.std(logit["fp32"])),
        "speedup_int8_vs_fp32": round(speed["int8"] / speed["fp32"], 3),
    }


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m benchmarks.int8_parity", description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+", help="trained run directories (only read)")
    p.add_argument("--batch", type=int, default=512, help="images per timed call")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per file (the best counts)")
    p.add_argument("--out", type=Path, default=None,
                   help="the JSON file to write (default: results/int8-parity/MACHINE-DATE-COMMIT.json)")
    args = p.parse_args(argv)
    args.out = args.out or result_path("int8-parity")
    started = datetime.now(timezone.utc)
    results: dict[str, Any] = {"date": started.isoformat(timespec="seconds"), "machine": machine_info(), "runs": []}
    for run in args.runs:
        r = parity(run, args.batch, args.rounds)
        results["runs"].append(r)
        print(f"{r['model']} ({run}): test accuracy fp32 {r['by_file']['fp32']['test_accuracy']:.2%}, int8 "
              f"{r['by_file']['int8']['test_accuracy']:.2%} on {r['n']}; labels agree {r['label_agreement']:.2%}; "
              f"int8 {r['speedup_int8_vs_fp32']:.2f}x fp32 ({r['by_file']['int8']['images_per_s']:,.0f} against "
              f"{r['by_file']['fp32']['images_per_s']:,.0f} images/s, {r['threads']} threads)")
    write_final(args.out, results, started)
    return args.out


if __name__ == "__main__":
    main()
