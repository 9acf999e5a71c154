"""Batch prediction through Ray against local predict, on the same images: `python -m benchmarks.predict_ray`.

Both engines, side by side in one run, alternating `--reps` times, from a folder of `--n` stand-in JPEGs to one
Parquet file of rows (`realfake.predict.write_file`, as `--out rows.parquet` writes it):
- local: `Detector.load` + `predict_batches` (decoding worker processes beside the model), as `realfake predict
  RUN FOLDER --out rows.parquet` runs;
- ray: `ray_batches` on a Ray started once beforehand on this machine (its start-up is reported apart: a cluster
  is normally up already), with the default actor plan (one actor per CPU here, no GPU), as `realfake predict
  RUN FOLDER --engine ray --out rows.parquet` runs; its time to the first batch (actors starting: a process,
  torch's import, the model's load) and its steady images/s after it are reported too.

The overhead ratio is Ray's wall time over local's (above 1: Ray is slower on one machine); both files are
checked to hold the same rows. Writes benchmarks/results/ray-predict/<machine>-<date>-<commit>.json (or --out).
The model is a run given with --run, or a `fast` run trained here for one epoch on the mini stand-in (its
accuracy does not matter to a throughput).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.common import DEFAULT_DATA, atomic_write_json, machine_info, result_path
from benchmarks.predict_files import write_test_jpegs

MINI = DEFAULT_DATA.with_name("standin-cifake-mini.zip")


def train_fast(out: Path) -> Path:
    from realfake import training
    from realfake.config import RunConfig

    cfg = RunConfig(data=str(MINI), model="fast", limit=1000, epochs=1, device="cpu", seed=0, out=str(out))
    return Path(training.train(cfg, progress=False, log=lambda m: None))


def timed(batches: Iterator[Any], marks: list[float]) -> Iterator[Any]:
    """The batches, each one's arrival time (perf_counter) noted in `marks`."""
    for b in batches:
        marks.append(time.perf_counter())
        yield b


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.predict_ray", description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="a trained run [default: a `fast` run trained here]")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a CIFAKE-style zip; its test JPEGs are used")
    p.add_argument("--n", type=int, default=10_000, help="images")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--actors", type=int, default=None)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)

    from realfake import tuning

    tuning.apply(passive_wait=True)  # as `realfake predict` does, before torch loads
    work = Path(tempfile.mkdtemp(prefix="realfake-ray-bench-"))
    try:
        return _measure(a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measure(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq
    import ray

    from realfake.detector import Detector
    from realfake.predict import predict_batches, write_file
    from realfake.predict_ray import Plan, ray_batches

    with zipfile.ZipFile(a.data) as zf:
        members = sorted(m for m in zf.namelist() if m.startswith("test/") and m.lower().endswith(".jpg"))
    folder = write_test_jpegs(a.data, members, a.n, work / "files")
    run = a.run or train_fast(work / "run")
    machine = machine_info()

    t = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    ray_start_s = time.perf_counter() - t
    plan = Plan.for_cluster(ray.cluster_resources(), a.actors)

    reps = []
    for _ in range(a.reps):
        t = time.perf_counter()
        det = Detector.load(run, device="cpu")
        local_load_s = time.perf_counter() - t
        tta = det.calibration.tta
        seen, read = write_file(predict_batches(det, [folder], batch_size=a.batch_size, progress=False),
                                work / "local.parquet")
        local_s = time.perf_counter() - t
        assert seen == read == a.n

        marks: list[float] = []
        t = time.perf_counter()
        batches = ray_batches(run, [folder], actors=a.actors, batch_size=a.batch_size, device="cpu", progress=False)
        seen, read = write_file(timed(batches, marks), work / "ray.parquet")
        ray_s = time.perf_counter() - t
        assert seen == read == a.n
        same = pq.read_table(work / "local.parquet").equals(pq.read_table(work / "ray.parquet"))
        k = min(plan.actors, len(marks)) - 1  # the actors start together: their first batches land together
        after_first = a.n - (k + 1) * a.batch_size  # the images of the batches after those
        reps.append({
            "local_s": local_s, "local_model_load_s": local_load_s,
            "ray_s": ray_s, "ray_first_batch_s": marks[0] - t,
            "ray_steady_images_per_s": after_first / (marks[-1] - marks[k]) if len(marks) > k + 1 else None,
            "local_images_per_s": a.n / local_s, "ray_images_per_s": a.n / ray_s,
            "overhead_ratio": ray_s / local_s, "rows_identical": same,
        })
    ray.shutdown()

    ratios = [r["overhead_ratio"] for r in reps]
    median = reps[sorted(range(len(reps)), key=lambda i: ratios[i])[len(reps) // 2]]
    machine["load_average_end"] = list(os.getloadavg())
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "args": {"run": str(a.run) if a.run else "fast, 1 epoch on 1,000 mini stand-in images (trained here)",
                 "n": a.n, "reps": a.reps, "batch_size": a.batch_size, "tta": tta},
        "machine": machine,
        "ray": {"version": ray.__version__, "start_s": ray_start_s, "actors": plan.actors,
                "gpus_per_actor": plan.gpus_per_actor},
        "median": median,
        "reps": reps,
        "overhead_ratio_runs": ratios,
        "notes": "overhead_ratio = ray_s / local_s, end to end on the same images (model load and actor start "
                 "included, Ray's own start-up not: see ray.start_s); ray_steady_images_per_s counts from the "
                 "arrival of each actor's first batch to the last. rows_identical: the two Parquet files hold "
                 "equal tables.",
    }
    out = a.out or result_path("ray-predict")
    atomic_write_json(out, result)
    print(f"{a.n:,} JPEGs, {plan.actors} actors, batch {a.batch_size}, load {machine['load_average_start']}: local "
          f"{median['local_images_per_s']:,.0f} img/s, Ray {median['ray_images_per_s']:,.0f} img/s (steady "
          f"{median['ray_steady_images_per_s'] or 0:,.0f}, first batch after {median['ray_first_batch_s']:.1f} s); "
          f"overhead ratio {median['overhead_ratio']:.2f} (runs {', '.join(f'{r:.2f}' for r in ratios)}); Ray "
          f"start {ray_start_s:.1f} s; rows identical: {all(r['rows_identical'] for r in reps)} -> {out}")
    return result


if __name__ == "__main__":
    main()
