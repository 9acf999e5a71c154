"""Peak memory of building the data cache against the cache's size: `python -m benchmarks.cache_rss`.

Issue 12 asks that building the cache never holds the data set in memory. This makes a data set `--copies`
times the stand-in (its 120,000 JPEGs extracted once, then hard-linked under rep00/, rep01/, ...: one copy
of the bytes on disk, unique paths, the same train/test and REAL/FAKE folders) and, for each size asked,
builds its cache from scratch in a child process (`load_dataset`, as training calls it) and records:
- `max_rss_mb`: /usr/bin/time -v's "Maximum resident set size" (the largest single process: the builder or
  one decoding worker, not their sum);
- `builder_max_rss_mb` / `largest_worker_max_rss_mb`: the same split by process (getrusage in the child);
- `tree_peak_rss_mb` / `tree_peak_pss_mb` / `tree_peak_anonymous_mb`: the builder and its workers summed,
  sampled every 0.25 s from /proc (RSS counts pages the forked workers share with the builder twice, PSS shares
  them out; both count the memory map's pages that were read, which the kernel can drop, and anonymous memory
  is what it cannot);
- `cache_bytes`: the entry's size on disk (du), against which the figures above are to be read;
- with --train-epochs, `training`: the same peaks for `realfake train` of `fast` from that cache (the whole
  command, and until its first epoch ends: the run's last steps hold the test split for evaluation).

Writes benchmarks/results/cache-rss/<machine>-<date>-<commit>[-train].json. Heavy: a 1.2 million image build
decodes for minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.common import DEFAULT_DATA, REPO, atomic_write_json, git_commit, machine_info, result_path

# The child: build the cache of argv[1] from scratch and say what it cost the builder and its workers.
CHILD = """
import json, resource, sys, time
from realfake.data.cache import cache_root, load_dataset
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
ds = load_dataset(sys.argv[1], progress=False)
print(json.dumps({
    "seconds": round(time.perf_counter() - t, 1),
    "n_images": len(ds), "n_skipped": len(ds.skipped), "from_cache": ds.from_cache, "key": ds.key,
    "entry": str(cache_root() / "datasets" / ds.key),
    "builder_rss_after_imports_mb": round(before / 1024, 1),
    "builder_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "largest_worker_max_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
}))
"""


def log(msg: str) -> None:
    print(f"[cache_rss {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def replicate(data: Path, work: Path, copies: int) -> Path:
    """`work`/x{copies}/rep00..: each the stand-in's files, hard links to one extracted copy (`work`/base).

    Hard links, not symbolic ones: the walker does not follow a link out of the data folder (it lists it as
    refused), and a hard link is an ordinary file. Reuses what an earlier call made.
    """
    base = work / "base"
    if not (base / ".complete").exists():
        shutil.rmtree(base, ignore_errors=True)
        log(f"extracting {data} into {base}")
        with zipfile.ZipFile(data) as zf:
            zf.extractall(base)
        (base / ".complete").write_text("")  # hidden: not an image to the walker
    files = [p.relative_to(base) for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")]
    root = work / f"x{copies}"
    if not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        log(f"hard-linking {copies} x {len(files):,} files into {root}")
        for k in range(copies):
            for rel in files:
                (root / f"rep{k:02d}" / rel).parent.mkdir(parents=True, exist_ok=True)
                os.link(base / rel, root / f"rep{k:02d}" / rel)
        (root / ".complete").write_text("")
    return root


def _tree_pids(pid: int) -> list[int]:
    """`pid` and its descendants, from every process's parent in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += children.get(p, [])
    return pids


def _rss_pss_kb(pid: int) -> tuple[int, int, int]:
    """RSS, PSS and anonymous memory (kB). RSS counts the pages of a memory-mapped file that the process has
    read, which the kernel can drop and read again; anonymous memory is what it cannot give back."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            text = f.read()
    except OSError:
        return 0, 0, 0
    found = [re.search(rf"^{key}:\s+(\d+) kB", text, re.M) for key in ("Rss", "Pss", "Anonymous")]
    rss, pss, anon = (int(m[1]) if m else 0 for m in found)
    return rss, pss, anon


def measure(data: Path, cache: Path, src: Path) -> dict[str, Any]:
    """Build `data`'s cache from scratch in a child under /usr/bin/time -v, sampling its process tree.

    `src` is the realfake source folder the child imports (another version's, to compare).
    """
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "REALFAKE_CACHE_DIR": str(cache), "PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = ["/usr/bin/time", "-v", sys.executable, "-c", CHILD, str(data)]
    load_start = list(os.getloadavg())
    out, err, peaks = _run_sampled(cmd, env, "the build")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(peaks)
    du = subprocess.run(["du", "-sb", result["entry"]], capture_output=True, text=True, check=True)
    result["cache_bytes"] = int(du.stdout.split()[0])
    result["cache_files"] = {p.name: p.stat().st_size for p in sorted(Path(result["entry"]).iterdir())}
    result["load_average_start"], result["load_average_end"] = load_start, list(os.getloadavg())
    result["command"] = " ".join(cmd[:3]) + " -c CHILD " + str(data) + f"  (REALFAKE_CACHE_DIR={cache})"
    return result


def _run_sampled(cmd: list[str], env: dict[str, str], what: str,
                 phase_done: Path | None = None) -> tuple[str, str, dict[str, Any]]:
    """Run `cmd` (under /usr/bin/time -v) sampling its process tree's RSS and PSS every 0.25 s; the peaks.

    With `phase_done`, the peaks until that file appears are also kept apart (for training: the epoch, before
    the run's last steps: calibration, the test split, the report).
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    keys = ("rss", "pss", "anon")
    peak = dict.fromkeys([*keys, *(f"phase_{k}" for k in keys)], 0)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            totals = [_rss_pss_kb(p) for p in _tree_pids(proc.pid)[1:]]  # [0] is /usr/bin/time itself
            now = dict(zip(keys, (sum(col) for col in zip(*totals, strict=True)), strict=True)) if totals else {}
            in_phase = phase_done is not None and not phase_done.exists()
            for k, v in now.items():
                peak[k] = max(peak[k], v)
                if in_phase:
                    peak[f"phase_{k}"] = max(peak[f"phase_{k}"], v)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed ({proc.returncode}):\n{err[-3000:]}")
    max_rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    peaks: dict[str, Any] = {
        "max_rss_mb": round(int(max_rss[1]) / 1024, 1) if max_rss else None,
        "tree_peak_rss_mb": round(peak["rss"] / 1024, 1),
        "tree_peak_pss_mb": round(peak["pss"] / 1024, 1),
        "tree_peak_anonymous_mb": round(peak["anon"] / 1024, 1),
    }
    if phase_done is not None:
        for k, name in zip(keys, ("rss", "pss", "anonymous"), strict=True):
            peaks[f"until_epoch_end_tree_peak_{name}_mb"] = round(peak[f"phase_{k}"] / 1024, 1)
    return out, err, peaks


def measure_training(data: Path, cache: Path, src: Path, run: Path, epochs: int, placement: str) -> dict[str, Any]:
    """`realfake train` of `fast` on `data` for `epochs`, from the cache `measure` left, sampling its memory.

    The peaks are given for the whole command and until its first epoch's end (history.csv written), since
    the run's last steps hold the test split in memory for evaluation.
    """
    shutil.rmtree(run, ignore_errors=True)
    env = {**os.environ, "REALFAKE_CACHE_DIR": str(cache), "PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1"}
    train = [sys.executable, "-m", "realfake", "train", "--model", "fast", "--data", str(data), "--protocol",
             "official", "--epochs", str(epochs), "--data-placement", placement, "--out", str(run)]
    load_start = list(os.getloadavg())
    t = time.perf_counter()
    _, err, peaks = _run_sampled(["/usr/bin/time", "-v", *train], env, "training", phase_done=run / "history.csv")
    info = json.loads((run / "run.json").read_text())
    split = json.loads((run / "data_report.json").read_text())["split"]
    return {
        "command": " ".join(train[1:]), "wall_s": round(time.perf_counter() - t, 1), **peaks,
        "train_seconds": info.get("train_seconds"), "data_placement": info.get("data_placement"),
        "data_placement_reason": info.get("data_placement_reason"), "device": info.get("device"),
        "n_train": split["train"]["n"], "n_val": split["val"]["n"], "n_test": split["test"]["n"],
        "load_average_start": load_start, "load_average_end": list(os.getloadavg()),
        "log_tail": [line for line in err.splitlines() if not line.startswith("\t")][-6:],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the stand-in zip to replicate")
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 10], help="sizes to measure, in stand-ins")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cache-rss"), help="replicated data and caches")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--src", type=Path, default=REPO / "src", help="the realfake sources to measure")
    ap.add_argument("--before-src", type=Path, default=None,
                    help="another version's sources (e.g. `git archive` of the commit before streaming), measured too")
    ap.add_argument("--before-copies", type=int, nargs="*", default=[1], help="sizes to measure --before-src at")
    ap.add_argument("--train-epochs", type=int, default=0,
                    help="also train fast this many epochs on each size (from the cache just built), sampling memory")
    ap.add_argument("--placement", default="stream", help="--data-placement of that training (auto|device|stream)")
    args = ap.parse_args(argv)
    runs = []
    plan = [(args.src, c) for c in args.copies]
    if args.before_src is not None:
        plan += [(args.before_src, c) for c in args.before_copies]
    for src, copies in plan:
        data = replicate(args.data, args.work, copies)
        log(f"building the cache of {copies}x the stand-in ({data}) with {src}")
        r = {"copies": copies, "src": str(src), **measure(data, args.work / "cache", src)}
        if args.train_epochs and src == args.src:
            log(f"training {args.train_epochs} epoch(s) of fast on it ({args.placement})")
            r["training"] = measure_training(data, args.work / "cache", src, args.work / "run", args.train_epochs,
                                             args.placement)
        shutil.rmtree(args.work / "cache", ignore_errors=True)
        log(json.dumps(r))
        runs.append(r)
    out = args.out or result_path("cache-rss", tag="train" if args.train_epochs else "")
    atomic_write_json(out, {
        "benchmark": "cache_rss",
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": str(args.data),
        "commit": git_commit(),
        "machine": machine_info(),
        "runs": runs,
    })
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
