"""Prediction from files against the bare model: `python -m benchmarks.predict_files RUN FOLDER OUT.json`.

`realfake predict RUN FOLDER`'s path (listing, decoding in worker processes, model, verdicts, JSON lines written
by a thread) beside the bare model (`Detector.predict_logits` on the same images, decoded and in memory, with
the run's TTA and precision), side by side `--reps` times, and where the pipeline's time goes. benchmarks.run
calls it for `fast`, in a child process set up as the `predict` command sets itself up: the OpenMP wait
policy (`realfake.tuning.apply(passive_wait=True)`) has to be chosen before torch is imported.
"""

from __future__ import annotations

import argparse
import inspect
import json
import multiprocessing
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, atomic_write_json, result_path


def write_test_jpegs(data: Path, members: list[str], n: int, out: Path) -> Path:
    """`n` files in `out`, the test split's JPEGs byte for byte (repeated under new names when it has fewer)."""
    out.mkdir(parents=True)
    with zipfile.ZipFile(data) as zf:
        blobs = [zf.read(m) for m in members[: min(n, len(members))]]
    for k in range(n):
        (out / f"{k:06d}.jpg").write_bytes(blobs[k % len(blobs)])
    return out


def _cpu_s(who: str) -> float:
    """CPU seconds of this process ("self", all its threads) or of its children that have ended and been reaped."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF if who == "self" else resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def predict_from_files(detector: Any, folder: Path, reps: int, rows: Path, sync: Callable[[], None]) -> dict[str, Any]:
    """The figures for one folder: images/s from files and of the bare model, their ratio (the median run's,
    and every run's), and the median run's account of its time.

    The main thread's stages add up to its wall time, bar `other`: `model` beside `model_at_bare_speed` is
    what sharing the CPU with the decoding workers cost the model; `wait for decoding` is the model idle for
    want of images (`wait for the first batch`: the pipeline filling). The bare model runs at its own default
    batch (`Detector.predict_logits`, 1,024) and, as a second figure, at the pipeline's.
    """
    import torch

    from realfake.data.images import FAST_JPEG_MIN_IMAGES, prepare_jpeg_decoding
    from realfake.data.inputs import expand_inputs
    from realfake.predict import decode_chunk, default_workers, predict_batches, write_rows

    batch = inspect.signature(predict_batches).parameters["batch_size"].default  # the CLI's, as users run it
    # Throughput in the steady state: torchvision's JPEG operators set up once, before the workers fork, as
    # `realfake predict` does wherever torch is imported (an ONNX Runtime job: from FAST_JPEG_MIN_IMAGES files).
    # Start-up (imports, the model's load) is not in these figures.
    fast_jpeg = prepare_jpeg_decoding(FAST_JPEG_MIN_IMAGES)
    images, errors, _ = decode_chunk(list(expand_inputs([folder])))
    n = len(errors)
    assert len(images) == n, "every benchmark JPEG decodes"
    detector.predict_logits(images[:256])  # warm-up: allocations, kernel choice
    sync()

    def bare(batch_size: int) -> float:
        t = time.perf_counter()
        for i in range(0, n, batch_size):
            detector.predict_logits(images[i:i + batch_size], batch_size)
        sync()
        return time.perf_counter() - t

    runs = []
    for _ in range(reps):
        cpu = _cpu_s("self")
        bare_s = bare(1024)
        bare_cpu = _cpu_s("self") - cpu
        bare_batch_s = bare(batch)
        stages: dict[str, float] = {}
        cpu, kids = _cpu_s("self"), _cpu_s("children")
        t = time.perf_counter()
        with rows.open("w") as f:
            seen, read = write_rows(predict_batches(detector, [folder], progress=False, stages=stages), "jsonl", f,
                                    stages=stages)
        wall = time.perf_counter() - t
        assert seen == read == n
        while multiprocessing.active_children():  # the pool's workers, reaped: their CPU time is counted
            time.sleep(0.01)
        runs.append({"bare_s": bare_s, "bare_batch_s": bare_batch_s, "files_s": wall, "bare_cpu_s": bare_cpu,
                     "files_cpu_s": _cpu_s("self") - cpu, "decode_cpu_s": _cpu_s("children") - kids,
                     "stages": stages})
    ratios = [r["bare_s"] / r["files_s"] for r in runs]
    r = runs[sorted(range(reps), key=lambda i: ratios[i])[reps // 2]]  # the median run
    st = r["stages"]
    main = {k: v for k, v in st.items() if "writer thread" not in k}
    return {
        "n_files": n,
        "batch_size": batch,
        "workers": min(default_workers(), -(-n // batch)),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "tta": detector.calibration.tta,
        "jpeg_decoder": "torchvision's operator, set up before the workers fork" if fast_jpeg else "Pillow",
        "device": str(getattr(detector, "device", "cpu")),
        "bare_model_images_per_s": n / r["bare_s"],
        "bare_model_at_pipeline_batch_images_per_s": n / r["bare_batch_s"],
        "from_files_images_per_s": n / r["files_s"],
        "ratio": r["bare_s"] / r["files_s"],
        "ratio_runs": ratios,
        # CPU seconds, which a busy machine's share-out changes far less than wall time: the bare model's over
        # the whole pipeline's (this process's threads and the decoding workers together)
        "cpu_ratio": r["bare_cpu_s"] / (r["files_cpu_s"] + r["decode_cpu_s"]),
        "cpu_ms_per_image": {"bare_model": r["bare_cpu_s"] / n * 1e3, "from_files_main_process":
                             r["files_cpu_s"] / n * 1e3, "from_files_decoding_workers": r["decode_cpu_s"] / n * 1e3},
        "from_files_images_per_s_runs": [n / x["files_s"] for x in runs],
        "bare_model_images_per_s_runs": [n / x["bare_s"] for x in runs],
        "where_the_time_goes_s": {
            "wall": r["files_s"],
            **main,
            "other": r["files_s"] - sum(main.values()),
            "model_at_bare_speed": r["bare_s"],
            "off the main thread: decoding (workers' CPU)": r["decode_cpu_s"],
            **{f"off the main thread: {k.replace(' (writer thread)', '')}": v for k, v in st.items()
               if "writer thread" in k},
        },
    }


def files_line(name: str, f: dict[str, Any]) -> str:
    """One line for the bench's printout: from files against the bare model, and where the rest went."""
    w = f["where_the_time_goes_s"]
    parts = ", ".join(f"{k} {v:.2f}" for k, v in w.items() if k not in ("wall", "model_at_bare_speed"))
    runs = ", ".join(f"{x:.2f}" for x in f["ratio_runs"])
    return (f"{name} predict from files ({f['n_files']:,} JPEGs, TTA {f['tta']}, batch {f['batch_size']}, "
            f"{f['workers']} decoding workers, {f['torch_threads']} torch threads, OMP_WAIT_POLICY "
            f"{f['omp_wait_policy']}): {f['from_files_images_per_s']:,.0f} img/s = {f['ratio']:.2f} x the bare "
            f"model's {f['bare_model_images_per_s']:,.0f} (runs {runs}; bare at batch {f['batch_size']}: "
            f"{f['bare_model_at_pipeline_batch_images_per_s']:,.0f}; CPU time ratio {f['cpu_ratio']:.2f}); "
            f"seconds: wall {w['wall']:.2f}, bare model "
            f"{w['model_at_bare_speed']:.2f}; {parts}")


def run_child(run_dir: Path, folder: Path, reps: int, device: str, out: Path) -> dict[str, Any]:
    """This module's main() in a fresh process (its OpenMP wait policy set before torch loads); its JSON."""
    cmd = [sys.executable, "-m", "benchmarks.predict_files", str(run_dir), str(folder), str(out),
           "--reps", str(reps), "--device", device]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"predict from files failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.predict_files", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("folder", type=Path, help="a folder of images, every one readable")
    p.add_argument("out", type=Path, nargs="?", default=None,
                   help="the JSON written (default: benchmarks/results/predict-files/MACHINE-DATE-COMMIT.json)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    a.out = a.out or result_path("predict-files")
    from realfake import tuning

    tuning.apply(passive_wait=True)  # as `realfake predict` does, before torch loads
    import torch

    from realfake.detector import Detector

    detector = Detector.load(a.run_dir, device=a.device)
    sync = torch.cuda.synchronize if detector.device.type == "cuda" else (lambda: None)
    result = predict_from_files(detector, a.folder, a.reps, a.out.with_suffix(".rows.jsonl"), sync)
    atomic_write_json(a.out, result)
    print(files_line(str(a.run_dir), result))
    return result


if __name__ == "__main__":
    main()
