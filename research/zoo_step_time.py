"""How long one training step of each zoo family takes on this machine: `python -m research.zoo_step_time`.

A trial record, not a maintained benchmark (issue 28 asks to say how long the zoo takes to train on a CPU). For
each family it trains 5 warm-up steps and then `--steps` timed steps of batch 64 on the mini stand-in's REAL
images, in a temporary folder, and writes research/results/zoo-step-time-<date>-<host>.json with the seconds
per step, the CPU and the load average. Run it alone: PyTorch slows several-fold beside another job.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from realfake.atomic import atomic_write_text
from realfake.zoo.families import FAMILIES
from realfake.zoo.train import real_images, train_generator

REPO = Path(__file__).resolve().parents[1]
MINI = Path(os.environ.get("REALFAKE_SHARED_DATA", REPO.parent / "shared" / "data")) / "standin-cifake-mini.zip"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    images = real_images(MINI)
    rows = {}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for name in FAMILIES:
            train_generator(images, name, Path(tmp) / f"{name}-warm", steps=args.warmup)
            t = time.perf_counter()
            train_generator(images, name, Path(tmp) / name, steps=args.steps)
            per_step = (time.perf_counter() - t) / args.steps
            rows[name] = {"seconds_per_step": round(per_step, 4),
                          "minutes_for_5000_steps": round(per_step * 5000 / 60, 1)}
            print(f"{name}: {per_step:.3f} s/step, ~{per_step * 5000 / 60:.0f} min for 5,000 steps", flush=True)
    out = REPO / "research" / "results" / (
        f"zoo-step-time-{datetime.now().strftime('%Y-%m-%d')}-{platform.node()}.json")
    atomic_write_text(out, json.dumps({
        "command": "python -m research.zoo_step_time " + f"--steps {args.steps} --warmup {args.warmup}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "load_average_start": load_start,
                    "load_average_end": os.getloadavg()},
        "batch_size": 64, "n_real_images": int(len(images)),
        "note": "seconds per step includes writing the weights once per family (small beside 20 steps); "
                "5,000 steps is an extrapolation, not a measured training",
        "families": rows,
    }, indent=2) + "\n")
    return out


if __name__ == "__main__":
    print(main())
