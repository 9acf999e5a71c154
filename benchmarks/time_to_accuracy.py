"""Time to accuracy: how long `fast`'s shipped recipe trains before its test accuracy reaches a target (99.5% by
default), at each precision, epoch budget and process count asked for: `python -m benchmarks.time_to_accuracy`.

airbench's measure: a run "reaches" the target when the accuracy it ends with (on the test split, as `realfake
train` reports it, calibrated threshold and TTA included) is at least the target, and its time to the target is
its training time (the epochs' own seconds, validation included; data caching, calibration and the report are
not training). The fastest run that reaches the target is the machine's time to accuracy. Each run is a real
`realfake train` (under `torchrun` for a process count above one) in a child process, into a temporary folder;
with --heldout each run is also judged on a generator it never saw (`realfake evaluate RUN --data HELDOUT`, as
benchmarks.generalization does), so that a faster recipe is never bought with generalisation.

Runs are named PRECISIONxEPOCHS (e.g. bf16x3, fp32x1), with a `torchrunN:` prefix for N processes
(`torchrun2:bf16x3`). Writes benchmarks/results/time-to-accuracy/<machine>-<date>-<commit>.json atomically after
every run (a stopped benchmark keeps what it finished), with the machine (GPU named), and prints the README's table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DEFAULT_DATA,
    RESULTS,
    atomic_write_json,
    cache_dir,
    machine_info,
    result_path,
    write_final,
)
from benchmarks.generalization import DEFAULT_HELDOUT, HELDOUT_NAME, build_heldout

_RUN = re.compile(r"^(?:torchrun(?P<procs>[1-9][0-9]*):)?(?P<precision>auto|fp32|bf16)x(?P<epochs>[1-9][0-9]*)$")


@dataclass(frozen=True)
class RunSpec:
    """One training run to time: precision, epoch budget and processes (torchrun when `torchrun` is set)."""

    name: str
    precision: str
    epochs: int
    processes: int
    torchrun: bool


def parse_runs(text: str) -> list[RunSpec]:
    """'bf16x3,fp32x3,torchrun2:bf16x3' -> RunSpecs; a malformed name is a ValueError that names it."""
    runs = []
    for name in (part.strip() for part in text.split(",")):
        if not name:
            continue
        m = _RUN.match(name)
        if m is None:
            raise ValueError(f"run {name!r} is not PRECISIONxEPOCHS (precision auto|fp32|bf16, e.g. bf16x3), "
                             "optionally prefixed torchrunN: (e.g. torchrun2:bf16x3)")
        procs = m["procs"]
        runs.append(RunSpec(name, m["precision"], int(m["epochs"]), int(procs or 1), procs is not None))
    if not runs:
        raise ValueError("no runs given")
    if len({r.name for r in runs}) != len(runs):
        raise ValueError("a run is named twice")
    return runs


def log(msg: str) -> None:
    print(f"[time-to-accuracy {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def train_command(spec: RunSpec, args: argparse.Namespace, out: Path) -> list[str]:
    """The `realfake train` command line of one run (through torchrun for spec.torchrun)."""
    train = ["-m", "realfake", "train", "--model", "fast", "--data", str(args.data), "--protocol", "official",
             "--device", args.device, "--precision", spec.precision, "--epochs", str(spec.epochs),
             "--seed", str(args.seed), "--out", str(out)]
    if args.limit is not None:
        train += ["--limit", str(args.limit)]
    if spec.torchrun:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={spec.processes}",
                *train]
    return [sys.executable, *train]


def epoch_seconds(run_dir: Path) -> list[float]:
    with open(run_dir / "history.csv", newline="") as f:
        return [float(row["seconds"]) for row in csv.DictReader(f)]


def measure(spec: RunSpec, args: argparse.Namespace, work: Path, heldout_dir: Path | None) -> dict[str, Any]:
    """Train one run in a child process and read its figures from the run folder it wrote."""
    run_dir = work / "runs" / spec.name.replace(":", "-")
    cmd = train_command(spec, args, run_dir)
    log(f"{spec.name}: {' '.join(cmd[1:])}")
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=args.run_timeout)
    wall = time.perf_counter() - t
    row: dict[str, Any] = {"run": spec.name, "precision_asked": spec.precision, "epochs": spec.epochs,
                           "processes": spec.processes, "torchrun": spec.torchrun, "wall_s": round(wall, 2)}
    if done.returncode != 0:
        row["error"] = (done.stderr or done.stdout).strip().splitlines()[-5:]
        log(f"{spec.name}: failed (exit {done.returncode}): {' | '.join(row['error'])}")
        return row
    info = json.loads((run_dir / "run.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    split = json.loads((run_dir / "data_report.json").read_text())["split"]
    seconds = epoch_seconds(run_dir)
    n_train = int(split["train"]["n"])
    train_s = float(info["train_seconds"])
    accuracy = float(metrics["accuracy"])
    row.update({
        "device": info.get("device"),
        "precision": info.get("precision"),
        "precision_reason": info.get("precision_reason"),
        "data_placement": info.get("data_placement"),
        "processes_recorded": info.get("processes"),
        "n_train": n_train,
        "epochs_run": info.get("epochs_run"),
        "epoch_seconds": seconds,
        "train_seconds": train_s,
        "train_images_per_s": round(n_train * len(seconds) / train_s, 1),
        # Epoch 1 holds the warm-up (kernel choice, allocator growth): the steady rate leaves it out when it can.
        "steady_images_per_s": round(n_train * (len(seconds) - 1) / sum(seconds[1:]), 1) if len(seconds) > 1
        else None,
        "test_accuracy": accuracy,
        "test_roc_auc": metrics.get("roc_auc"),
        "test_ece": metrics.get("ece"),
        "reaches_target": accuracy >= args.target,
        "time_to_target_s": train_s if accuracy >= args.target else None,
    })
    if heldout_dir is not None:
        from realfake.evaluation import evaluate

        m = evaluate(run_dir, heldout_dir, device=args.device, progress=False, log=lambda _m: None)
        recall = {c: m["per_class"][c]["recall"] for c in ("REAL", "FAKE")}
        row["heldout"] = {"name": HELDOUT_NAME, "balanced_accuracy": round((recall["REAL"] + recall["FAKE"]) / 2, 6),
                          "fakes_caught": recall["FAKE"], "roc_auc": m.get("roc_auc"), "ece": m.get("ece")}
    log(f"{spec.name}: test {accuracy:.2%} after {train_s:.1f} s of training "
        f"({row['train_images_per_s']:,.0f} img/s; epochs {', '.join(f'{s:.1f}' for s in seconds)} s)"
        + (f"; {HELDOUT_NAME} balanced {row['heldout']['balanced_accuracy']:.2%}" if "heldout" in row else ""))
    return row


def summarize(rows: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """The fastest run that reaches the target, and each bf16 run's accuracy against its fp32 twin."""
    reached = [r for r in rows if r.get("reaches_target")]
    best = min(reached, key=lambda r: r["time_to_target_s"]) if reached else None
    twins = {}
    by_key = {(r["precision"], r["epochs"], r["processes"], r["torchrun"]): r for r in rows if "test_accuracy" in r}
    for (precision, epochs, procs, torchrun), r in by_key.items():
        fp32 = by_key.get(("fp32", epochs, procs, torchrun))
        if precision != "fp32" and fp32 is not None:
            twins[r["run"]] = {"vs": fp32["run"], "accuracy_points": round(100 * (r["test_accuracy"]
                                                                                 - fp32["test_accuracy"]), 3),
                               "train_speedup": round(r["train_images_per_s"] / fp32["train_images_per_s"], 3)}
    return {"target": target, "fastest_run_reaching_target": best["run"] if best else None,
            "time_to_target_s": best["time_to_target_s"] if best else None, "reduced_precision_vs_fp32": twins}


def table(results: dict[str, Any]) -> str:
    gpu = results["machine"].get("gpu")
    where = gpu or results["machine"].get("cpu")
    lines = [f"Measured on {where} ({results['date'][:10]}); target {results['summary']['target']:.1%} test accuracy.",
             "", "| run | precision | processes | epochs | train img/s | train s | test acc | reaches target |"
             + (f" {HELDOUT_NAME} balanced |" if results["args"].get("heldout") else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if results["args"].get("heldout") else "")]
    for r in results["runs"].values():
        if "error" in r:
            lines.append(f"| {r['run']} | failed: {r['error'][-1] if r['error'] else '?'} |")
            continue
        held = f" {r['heldout']['balanced_accuracy']:.2%} |" if "heldout" in r else ""
        lines.append(f"| {r['run']} | {r['precision']} | {r['processes']} | {r['epochs_run']} | "
                     f"{r['train_images_per_s']:,.0f} | {r['train_seconds']:.1f} | {r['test_accuracy']:.2%} | "
                     f"{'yes' if r['reaches_target'] else 'no'} |{held}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.time_to_accuracy", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the stand-in zip (CIFAKE layout)")
    p.add_argument("--heldout", type=Path, default=None,
                   help=f"zip with FAKE/ of a generator never trained on (e.g. {DEFAULT_HELDOUT.name}); off by default")
    p.add_argument("--n-heldout", type=int, default=2000, help="held-out FAKE images, and as many stand-in REAL")
    p.add_argument("--runs", default="fp32x3,bf16x3,bf16x1", help="comma-separated PRECISIONxEPOCHS, optionally "
                   "prefixed torchrunN: (e.g. fp32x3,bf16x3,torchrun2:bf16x3)")
    p.add_argument("--target", type=float, default=0.995, help="test accuracy a run must end with")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--limit", type=int, default=None, help="stratified subset (default: the whole zip)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--run-timeout", type=float, default=3600, help="seconds one training may take")
    p.add_argument("--out-dir", type=Path, default=RESULTS,
                   help="results folder (the JSON goes in its time-to-accuracy/)")
    a = p.parse_args(argv)
    try:
        a.runs = parse_runs(a.runs)
    except ValueError as e:
        p.error(f"--runs: {e}")
    if not 0 < a.target <= 1:
        p.error("--target must be in (0, 1]")
    return a


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark; returns the JSON file written."""
    args = parse_args(argv)
    for what, path in (("stand-in", args.data), ("held-out", args.heldout)):
        if path is not None and not path.is_file():
            raise SystemExit(f"time_to_accuracy: {what} data not found: {path}")
    started = datetime.now(timezone.utc)
    path = result_path("time-to-accuracy", args.out_dir)
    results: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.time_to_accuracy", *(argv or sys.argv[1:])]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "runs"}
        | {"runs": [r.name for r in args.runs]},
        "machine": machine_info(),
        "complete": False,
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="realfake-tta-") as tmp, cache_dir(Path(tmp) / "cache"):
        work = Path(tmp)  # one data cache for every run (the children inherit it): the first run builds it
        heldout_dir = None
        if args.heldout is not None:
            heldout_dir = work / f"heldout-{HELDOUT_NAME}"
            results["heldout"] = build_heldout(args.data, args.heldout, args.n_heldout, args.seed, heldout_dir)
        rows = []
        for spec in args.runs:
            rows.append(measure(spec, args, work, heldout_dir))
            results["runs"][spec.name] = rows[-1]
            results["summary"] = summarize(rows, args.target)
            results["machine"]["load_average_end"] = list(os.getloadavg())
            atomic_write_json(path, results)
    return write_final(path, results, started, table(results))


if __name__ == "__main__":
    main()
