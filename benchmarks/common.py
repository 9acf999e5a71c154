"""What every benchmark shares: where its JSON goes, the machine it ran on, atomic writes, step timing.

A result is written to benchmarks/results/<suite>/<machine>-<date>-<commit>.json (`result_path`), so that a figure
quoted anywhere can be traced to the machine, the day and the code that gave it; benchmarks/results/INDEX.md
says which claim each file backs. The machine is a short name chosen by whoever runs it (REALFAKE_BENCH_MACHINE,
e.g. vm, xeon-amx, h100), the host name otherwise.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from realfake.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_DATA = Path(os.environ.get("REALFAKE_SHARED_DATA", REPO.parent / "shared" / "data")) / "standin-cifake.zip"


def git_commit() -> str:
    """The checkout's short commit, or 'nocommit' outside a git checkout (a copied tree, no git)."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "nocommit"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "nocommit"


def machine_label() -> str:
    """A short file-name-safe name of this machine: REALFAKE_BENCH_MACHINE, else the host name."""
    raw = os.environ.get("REALFAKE_BENCH_MACHINE") or socket.gethostname() or "host"
    return re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-") or "host"


def result_path(suite: str, root: Path | None = None, machine: str | None = None, tag: str = "") -> Path:
    """<root>/<suite>/<machine>-<date>-<commit>[-<tag>].json, with -2, -3, ... when that name is taken, so that a
    second run on the same day and commit never overwrites the first one's record."""
    folder = (root or RESULTS) / suite
    stem = f"{machine or machine_label()}-{date.today():%Y-%m-%d}-{git_commit()}" + (f"-{tag}" if tag else "")
    path, n = folder / f"{stem}.json", 2
    while path.exists():
        path, n = folder / f"{stem}-{n}.json", n + 1
    return path


def steady_throughput(batches: list[list[tuple[int, float]]]) -> float:
    """Images/s over steady-state batches. `batches[e]` holds (images, seconds) for each batch of epoch e.

    Epoch 1 is warm-up (allocations, oneDNN kernel choice, tf.function tracing) when there are more epochs;
    in a one-epoch run its first fifth of the batches (at least one, when there are two or more) is.
    """
    steady = [b for epoch in batches[1:] for b in epoch]
    if not steady and batches:
        first = batches[0]
        skip = max(1, len(first) // 5) if len(first) > 1 else 0
        steady = first[skip:]
    n = sum(b[0] for b in steady)
    s = sum(b[1] for b in steady)
    return n / s if s > 0 else float("nan")


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000.0, q)) if seconds else float("nan")


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b <= 0:
        return None
    return a / b


def atomic_write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def write_final(path: Path, results: dict[str, Any], started: datetime, table_text: str | None = None) -> Path:
    """A long benchmark's last write: marked complete, with its wall time and end load; its table printed."""
    results["complete"] = True
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["wall_s"] = round((datetime.now(timezone.utc) - started).total_seconds(), 1)
    atomic_write_json(path, results)
    if table_text is not None:
        print(table_text)
    print(f"\nwrote {path}")
    return path


@contextlib.contextmanager
def cache_dir(path: Path) -> Iterator[None]:
    """realfake's data cache in `path` (REALFAKE_CACHE_DIR) for the block, whatever it was before."""
    old = os.environ.get("REALFAKE_CACHE_DIR")
    os.environ["REALFAKE_CACHE_DIR"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("REALFAKE_CACHE_DIR", None)
        else:
            os.environ["REALFAKE_CACHE_DIR"] = old


def cpu_model() -> str:
    """The CPU's model name, as realfake.device reads it (the one place that reads the CPU)."""
    from realfake.device import cpu_info

    return str(cpu_info()["model"])


def machine_info() -> dict[str, Any]:
    """What a figure was measured on: CPU model and ISA flags (realfake.device.cpu_info), GPU, threads, load."""
    import torch

    from realfake.device import cpu_info, keep_freed_memory

    cpu = cpu_info()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "host": socket.gethostname(),
        "cpu": cpu["model"],
        "isa": cpu["isa"],
        "isa_source": cpu["isa_source"],
        "native_bf16_cpu": cpu["native_bf16"],
        "torch_cpu_capability": cpu["torch_cpu_capability"],
        "cores": os.cpu_count(),
        "gpu": gpu,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "malloc": keep_freed_memory(),  # what realfake's training and prediction set (it applies it here too)
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_start": list(os.getloadavg()),
        "commit": git_commit(),
    }


def isa_line(machine: dict[str, Any]) -> str:
    """The ISA flags that are present, e.g. "avx2 avx512f amx_bf16" (or "ISA flags not recorded")."""
    isa = machine.get("isa")
    if not isa:
        return "ISA flags not recorded"
    present = [k for k, v in isa.items() if v]
    return " ".join(present) if present else "none of " + " ".join(isa)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class StepTimer:
    """Every training step's wall time, through training's public hook (fit.StepObserver, `step_observer=`).

    A step's time runs from the end of the step before (or the epoch's start) to the end of this one: data
    (gather, cast, flips) + forward + backward + optimiser, like the reference's per-batch timer. `sync` waits for
    the GPU so that asynchronous work is charged to the right step. `epochs[e]` holds (images, seconds) for each
    step of epoch e, as steady_throughput reads them.
    """

    def __init__(self, sync: Callable[[], None] = lambda: None) -> None:
        self.epochs: list[list[tuple[int, float]]] = []
        self._sync = sync
        self._t = 0.0

    def restart(self) -> None:
        self.epochs.append([])
        self._sync()
        self._t = time.perf_counter()

    def observe(self, images: int) -> None:
        self._sync()
        now = time.perf_counter()
        self.epochs[-1].append((images, now - self._t))
        self._t = now
