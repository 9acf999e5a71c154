"""Training throughput on a busy machine: `fast` training steps alone, and beside another CPU-bound PyTorch job,
under the thread settings that decide how PyTorch shares the cores (intra-op threads, OpenMP's wait policy).

Each measurement runs in a child process (the settings must be in place before torch loads). The competitor is
another PyTorch process multiplying matrices on as many threads as there are cores, as a second training job
would. "Fair share" is half of the alone throughput (two jobs, one machine); issue 11 asks for at least half of it.

    python -m benchmarks.contention [--steps 40] [--out benchmarks/results/contention/MACHINE-DATE-COMMIT[-loop].json]
    python -m benchmarks.contention --loop [--limit 6000] [--data ZIP] [--out ...]

`--loop` times training's whole loop instead (`realfake.training.train`: the recipe's JPEG and blur augmentation,
2 epochs, the second timed) under realfake's own default (spinning threads with realfake.device.ThreadGovernor)
and fixed thread counts. The bare steps above hid what the loop showed on a 2-core Xeon: sleeping threads cost
the loop a sixth to a third alone, and beside the other job both policies sometimes fell below 70 img/s on 2
threads (README "On a busy machine").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHILD = r"""
import os, sys, time, torch
threads = int(sys.argv[1]); steps = int(sys.argv[2])
if threads > 0:
    torch.set_num_threads(threads)
from realfake.models import build
from realfake.data.tensors import to_float
model = build("fast", "none").model.train().to(memory_format=torch.channels_last)
opt = torch.optim.Adam(model.parameters(), 2e-3)
x8 = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8)
y = (torch.arange(128) % 2).float()
def step():
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(to_float(x8)), y)
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(5):
    step()
t = time.perf_counter()
for _ in range(steps):
    step()
print(steps * 128 / (time.perf_counter() - t))
"""

LOOP_CHILD = r"""
import json, sys, tempfile
from benchmarks.common import StepTimer, steady_throughput
from realfake.training import train
timer = StepTimer()
with tempfile.TemporaryDirectory() as tmp:
    run = train(model="fast", data=sys.argv[1], limit=int(sys.argv[2]), epochs=2, out=tmp + "/run", progress=False,
                log=lambda m: None, seed=42, step_observer=timer, tuning=True)  # as the command trains
    switches = json.loads((run / "run.json").read_text()).get("training_threads", [])
print(json.dumps({"img_s": steady_throughput(timer.epochs), "switches": switches}))
"""

COMPETITOR = r"""
import torch
a = torch.rand(1024, 1024); b = torch.rand(1024, 1024)
while True:
    a = (a @ b).clamp_(-1, 1)
"""

SETTINGS = {
    "default (threads = cores, OpenMP default wait)": {"threads": 0, "env": {}},
    "threads = cores, OMP_WAIT_POLICY=PASSIVE": {"threads": 0, "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
    "threads = 1": {"threads": 1, "env": {}},
    "threads = cores / 2, OMP_WAIT_POLICY=PASSIVE": {"threads": -2, "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
}


LOOP_SETTINGS = {
    "realfake's default (spinning threads, ThreadGovernor)": {"threads": 0, "env": {}},
    "2 threads fixed, OMP_WAIT_POLICY=PASSIVE (the default until 2026-11-29)":
        {"threads": 2, "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
    "2 threads fixed, spinning": {"threads": 2, "env": {}},
    "1 thread": {"threads": 1, "env": {}},
}


def measure_loop(threads: int, env: dict[str, str], data: Path, limit: int, cache: Path) -> dict[str, Any]:
    """Training's whole loop in a child; a fixed count goes through OMP_NUM_THREADS, which the governor obeys."""
    full_env = {**os.environ, **env, "REALFAKE_CACHE_DIR": str(cache)}
    if threads:
        full_env["OMP_NUM_THREADS"] = str(threads)
    else:
        full_env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", LOOP_CHILD, str(data), str(limit)], cwd=Path(__file__).parents[1],
                         env=full_env, capture_output=True, text=True, check=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(threads: int, env: dict[str, str], steps: int) -> float:
    n = max(1, (os.cpu_count() or 1) // 2) if threads == -2 else threads  # 0: torch's default (all cores)
    full_env = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(steps)],
                         env=full_env, capture_output=True, text=True, check=True, timeout=900)
    return float(out.stdout.strip().splitlines()[-1])


def once(setting: dict[str, Any], args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    """One measurement under one setting: the loop's or the bare step's images/s, and the governor's switches."""
    if args.loop:
        return measure_loop(setting["threads"], setting["env"], args.data, args.limit, cache)
    return {"img_s": measure(setting["threads"], setting["env"], args.steps), "switches": []}


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--loop", action="store_true", help="time training's whole loop (realfake.training.train)")
    p.add_argument("--limit", type=int, default=6000, help="--loop: images of the data set used")
    p.add_argument("--data", type=Path, default=None, help="--loop: the data (default: the stand-in zip)")
    args = p.parse_args(argv)
    from benchmarks.common import DEFAULT_DATA, atomic_write_json, machine_info, result_path

    args.data = args.data or DEFAULT_DATA

    results: dict[str, dict[str, Any]] = {}
    settings = LOOP_SETTINGS if args.loop else SETTINGS
    with tempfile.TemporaryDirectory() as cache:
        for name, s in settings.items():
            alone = once(s, args, Path(cache))
            comp = subprocess.Popen([sys.executable, "-c", COMPETITOR], stdout=subprocess.DEVNULL)
            try:
                time.sleep(3)  # let it spin up
                busy = once(s, args, Path(cache))
            finally:
                comp.kill()
                comp.wait()
            results[name] = {"alone_img_s": round(alone["img_s"], 1), "contended_img_s": round(busy["img_s"], 1)}
            if args.loop:
                results[name]["thread_switches"] = {"alone": alone["switches"], "contended": busy["switches"]}
            print(f"{name}: alone {alone['img_s']:.0f} img/s, beside a 2-thread PyTorch job {busy['img_s']:.0f} img/s",
                  flush=True)
    base = results[next(iter(settings))]["alone_img_s"]
    for r in results.values():
        r["share_of_fair"] = round(r["contended_img_s"] / (base / 2), 3)  # fair share: half the default alone
    out = args.out or result_path("contention", tag="loop" if args.loop else "")
    record = {"command": "python -m benchmarks.contention " + " ".join(argv or sys.argv[1:]),
              "machine": machine_info(), "steps": None if args.loop else args.steps, "batch": 128, "model": "fast",
              "measured": "training's whole loop, 2 epochs" if args.loop else "bare training steps",
              "limit": args.limit if args.loop else None, "settings": results}
    atomic_write_json(out, record)
    print(json.dumps(results, indent=1))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
