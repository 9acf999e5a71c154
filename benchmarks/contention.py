"""Training throughput on a busy machine: `fast` training steps alone, and beside another CPU-bound PyTorch job,
under the thread settings that decide how PyTorch shares the cores (intra-op threads, OpenMP's wait policy).

Each measurement runs in a child process (the settings must be in place before torch loads). The competitor is
another PyTorch process multiplying matrices on as many threads as there are cores, as a second training job
would. "Fair share" is half of the alone throughput (two jobs, one machine); issue 11 asks for at least half of it.

    python -m benchmarks.contention [--steps 40] [--out benchmarks/results/contention-DATE-HOST.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

CHILD = r"""
import os, sys, time, torch
threads = int(sys.argv[1]); steps = int(sys.argv[2])
if threads > 0:
    torch.set_num_threads(threads)
from realfake.models import build
from realfake.data.batches import to_float
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


def measure(threads: int, env: dict[str, str], steps: int) -> float:
    n = max(1, (os.cpu_count() or 1) // 2) if threads == -2 else threads  # 0: torch's default (all cores)
    full_env = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), str(steps)],
                         env=full_env, capture_output=True, text=True, check=True, timeout=900)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    from benchmarks.run import machine_info  # the bench's own record of the machine

    results: dict[str, dict[str, float]] = {}
    for name, s in SETTINGS.items():
        alone = measure(s["threads"], s["env"], args.steps)
        comp = subprocess.Popen([sys.executable, "-c", COMPETITOR], stdout=subprocess.DEVNULL)
        try:
            time.sleep(3)  # let it spin up
            busy = measure(s["threads"], s["env"], args.steps)
        finally:
            comp.kill()
            comp.wait()
        results[name] = {"alone_img_s": round(alone, 1), "contended_img_s": round(busy, 1)}
        print(f"{name}: alone {alone:.0f} img/s, beside a 2-thread PyTorch job {busy:.0f} img/s", flush=True)
    base = results[next(iter(SETTINGS))]["alone_img_s"]
    for r in results.values():
        r["share_of_fair"] = round(r["contended_img_s"] / (base / 2), 3)  # fair share: half the default alone
    out = args.out or Path("benchmarks/results") / f"contention-{date.today()}-{platform.node() or 'host'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": "python -m benchmarks.contention " + " ".join(argv or sys.argv[1:]),
              "machine": machine_info(), "steps": args.steps, "batch": 128, "model": "fast", "settings": results}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(out)
    print(json.dumps(results, indent=1))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
