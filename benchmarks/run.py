"""realfake vs the original notebook (Keras), on the same data and machine, in one run: `python -m benchmarks.run`.

Measures, and writes to benchmarks/results/<date>-<host>.json (atomically) with a table on stdout:
- data prep: realfake's cache built cold (JPEG images/s decoded, parallel processes) and reloaded warm;
- training throughput (images/s, steady state: the first epoch is left out as warm-up; in a one-epoch run
  its first fifth of the batches), for the Keras reference, `seed-resnet50` and `fast`;
- time-to-accuracy: wall time (validation included) until the end of the epoch whose weights each model
  ends with (early stopping restores the best), and that model's accuracy on a fixed test split;
- inference: images/s on in-memory uint8 images and single-image latency (p50/p95 ms), through realfake's
  Detector (its test-time augmentation included, as a user gets it), and through ONNX Runtime when
  realfake.export is available;
- predict from files (`fast`, in a child process set up as `realfake predict` is; see benchmarks.predict_files):
  `realfake predict`'s path from a folder of JPEGs to JSON lines, beside the bare
  model on the same images in memory, their ratio, and where the pipeline's remaining time goes;
- ratios realfake / reference (higher is better for every one of them), the machine, threads, load.

All three models see the same images: a stratified `--limit` subset of the stand-in zip, split 70/20/10
by realfake's `seed` protocol; the reference reads those JPEGs from a temporary CIFAKE-style folder tree
(never inside the repository or the shared data folder), as the notebook read its folders.
The reference runs in a child process so that TensorFlow and PyTorch never share a process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("REALFAKE_SHARED_DATA", REPO.parent / "shared" / "data")) / "standin-cifake.zip"
REALFAKE_MODELS = ("seed-resnet50", "fast")


# ---------------------------------------------------------------- small helpers


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
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "gpu": gpu,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_start": list(os.getloadavg()),
    }


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- data


def measure_cache(data: Path, limit: int | None, seed: int, cache_dir: Path) -> tuple[Any, dict[str, Any]]:
    """Build realfake's cache cold in `cache_dir`, then load it warm; returns the data set and the figures."""
    from realfake.data.cache import load_dataset

    os.environ["REALFAKE_CACHE_DIR"] = str(cache_dir)
    t = time.perf_counter()
    load_dataset(data, limit, seed, progress=False)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    ds = load_dataset(data, limit, seed, progress=False)
    reload_s = time.perf_counter() - t
    assert ds.from_cache
    t = time.perf_counter()
    checksum = int(np.asarray(ds.images).sum(dtype=np.int64))  # every page read once
    read_s = time.perf_counter() - t
    return ds, {
        "n_images": len(ds),
        "decode_s": cold,
        "decode_images_per_s": len(ds) / cold,
        "reload_s": reload_s,
        "reload_and_read_all_s": read_s + reload_s,
        "checksum": checksum,
        "workers": os.cpu_count(),
    }


def extract_split_tree(data: Path, ds: Any, split: dict[str, np.ndarray], out: Path) -> None:
    """The split's JPEGs, byte for byte, as out/{train,val,test}/{REAL,FAKE}/NNNNNN.jpg for the reference."""
    from realfake.contract import CLASS_NAMES

    with zipfile.ZipFile(data) as zf:
        for name, idx in split.items():
            for cls in CLASS_NAMES:
                (out / name / cls).mkdir(parents=True, exist_ok=True)
            for i in idx:
                member = ds.paths[int(i)]
                suffix = Path(member).suffix.lower() or ".jpg"
                target = out / name / CLASS_NAMES[int(ds.labels[int(i)])] / f"{int(i):06d}{suffix}"
                target.write_bytes(zf.read(member))


# ---------------------------------------------------------------- realfake


@contextlib.contextmanager
def timed_train_batches(records: list[list[tuple[int, float]]], sync: Callable[[], None]) -> Iterator[None]:
    """Time every training step of realfake.fit from outside: wall time between consecutive batch requests.

    A step's time is data (gather, cast, flips) + forward + backward + optimiser, like the reference's
    per-batch timer. `sync` waits for the GPU so that asynchronous work is charged to the right step.
    """
    import realfake.fit as fit_module

    original = fit_module.train_batches

    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        records.append([])
        sync()
        t = time.perf_counter()
        for x, y in original(*args, **kwargs):
            yield x, y
            sync()
            now = time.perf_counter()
            records[-1].append((len(y), now - t))
            t = now

    fit_module.train_batches = wrapper
    try:
        yield
    finally:
        fit_module.train_batches = original


def flops_per_image(model: Any) -> dict[str, float]:
    """Forward FLOPs per image (eval) and forward+backward FLOPs per training image, by torch's counter."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    m = copy.deepcopy(model).cpu().float()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        m.eval()(torch.rand(1, 3, 32, 32))
    fwd = fc.get_total_flops()
    m.train()
    with FlopCounterMode(display=False) as fc:
        m(torch.rand(2, 3, 32, 32)).sum().backward()
    return {"forward_mflop": fwd / 1e6, "train_mflop": fc.get_total_flops() / 2 / 1e6}


def run_realfake(
    name: str, ds: Any, split: dict[str, np.ndarray], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """Train one registry model with realfake.fit, then time prediction through Detector (and ONNX Runtime)."""
    import torch
    from safetensors.torch import save_file

    from realfake.config import RunConfig
    from realfake.detector import Detector
    from realfake.device import select_device
    from realfake.fit import fit, state_to_cpu
    from realfake.infer import predict_logits
    from realfake.models import apply_recipe, build
    from realfake.rundir import RunDir

    device = select_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    run_dir = work / name
    run_dir.mkdir(parents=True)
    torch.manual_seed(args.seed)
    built = build(name, args.weights)
    cfg = RunConfig(model=name, epochs=args.epochs, device=args.device, seed=args.seed, limit=args.limit,
                    weights=args.weights)
    cfg = apply_recipe(cfg, built.recipe)
    flops = flops_per_image(built.model)
    records: list[list[tuple[int, float]]] = []
    log(f"{name}: training {len(split['train'])} images, {args.epochs} epochs, batch {cfg.batch_size} on {device}")
    with timed_train_batches(records, sync):
        result = fit(built.model, ds.images, ds.labels, split, cfg, run_dir, device, progress=args.progress)
    seconds = [row["seconds"] for row in result.history]
    best = max(result.best_epoch, 1)
    test_idx = split["test"]
    test_images = np.asarray(ds.images[test_idx])
    logits = predict_logits(built.model, test_images, device, cfg.eval_batch_size, tta=cfg.tta)
    accuracy = float(((logits > 0) == (ds.labels[test_idx] == 1)).mean())

    # A minimal run directory, enough for Detector.load and realfake.export.
    cfg.out = str(run_dir)
    run = RunDir(run_dir)
    run.write_config(cfg)
    save_file(state_to_cpu(built.model), str(run / RunDir.WEIGHTS))
    run.write_json(RunDir.INFO, {"model": name, "threshold": 0.5, "tta": cfg.tta})
    detector = Detector.load(run_dir, device=args.device)
    pred = time_predict(detector.predict_proba, test_images, args, sync)
    from_files = None
    if name in args.files_models and args.files_n > 0:
        log(f"{name}: predict from files, {args.files_n} JPEGs, {args.files_reps} runs beside the bare model")
        from benchmarks.predict_files import run_child, write_test_jpegs

        files = write_test_jpegs(args.data, [ds.paths[int(i)] for i in test_idx], args.files_n, work / f"{name}-files")
        from_files = run_child(run_dir, files, args.files_reps, args.device, work / f"{name}-files.json")
    out: dict[str, Any] = {
        "weights_used": built.weights_used,
        "recipe": {k: getattr(cfg, k) for k in ("batch_size", "lr", "schedule", "label_smoothing", "tta")},
        "device": str(device),
        **{k: round(v, 2) for k, v in flops.items()},
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "history": result.history,
        "train_images_per_s": steady_throughput(records),
        "fit_s": result.seconds,
        "time_to_accuracy_s": float(sum(seconds[:best])),
        "test_accuracy": accuracy,
        "test_n": len(test_idx),
        **pred,
        "onnx": run_onnx(run_dir, test_images, args),
    }
    if from_files is not None:
        out["predict_from_files"] = from_files
    if device.type == "cpu":
        out["cpu_inference_variants"] = cpu_inference_variants(built.model, test_images, args)
    return out


def cpu_inference_variants(model: Any, images: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Prediction images/s without test-time augmentation: eager PyTorch vs TorchScript frozen and optimised.

    torch.jit.optimize_for_inference folds BatchNorm into the convolutions and runs them through oneDNN with
    fused ReLU, which is what TensorFlow's graph optimiser does for Keras; this measures how much of Keras's
    lead in prediction that accounts for. A measurement only: the product predicts eagerly.
    """
    import torch

    from realfake.infer import predict_logits

    model = model.cpu().eval()
    with torch.inference_mode():
        example = torch.rand(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, example)))
    cpu = torch.device("cpu")
    eager = time_predict(lambda x: predict_logits(model, x, cpu), images, args, lambda: None)
    jit = time_predict(lambda x: predict_logits(frozen, x, cpu), images, args, lambda: None)
    return {"eager_images_per_s": eager["predict_images_per_s"], "jit_optimized_images_per_s":
            jit["predict_images_per_s"], "jit_optimized_latency_ms_p50": jit["latency_ms_p50"]}


def time_predict(
    predict: Callable[[np.ndarray], Any], images: np.ndarray, args: argparse.Namespace, sync: Callable[[], None]
) -> dict[str, float]:
    """Images/s over --predict-n uint8 images (after one warm-up batch) and single-image latency."""
    reps = -(-args.predict_n // len(images))
    batch = np.ascontiguousarray(np.concatenate([images] * reps)[: args.predict_n])
    predict(batch[:64])
    sync()
    t = time.perf_counter()
    predict(batch)
    sync()
    predict_s = time.perf_counter() - t
    single = []
    for i in range(args.latency_n + 3):
        one = batch[i % len(batch)][None]
        t = time.perf_counter()
        predict(one)
        sync()
        single.append(time.perf_counter() - t)
    single = single[3:]
    return {
        "predict_images_per_s": len(batch) / predict_s,
        "latency_ms_p50": percentile_ms(single, 50),
        "latency_ms_p95": percentile_ms(single, 95),
    }


def run_onnx(run_dir: Path, images: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """The same run exported by realfake.export and run by ONNX Runtime on the CPU; a note when unavailable."""
    try:
        import onnxruntime as ort

        from realfake.export import export_onnx
    except ImportError as e:
        return {"skipped": f"realfake.export or onnxruntime not importable ({e})"}
    import torch

    try:
        path = export_onnx(run_dir)
    except Exception as e:  # noqa: BLE001 - a benchmark reports a failed export and goes on
        return {"skipped": f"export failed: {e.__class__.__name__}: {e}".splitlines()[0][:300]}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def predict(x: np.ndarray) -> Any:
        return session.run(None, {input_name: x})

    figures = time_predict(predict, images, args, lambda: None)
    return {**figures, "note": "ONNX Runtime CPU, no test-time augmentation", "threads": opts.intra_op_num_threads}


# ---------------------------------------------------------------- reference


def run_reference(data_dir: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The Keras notebook in a child process (see benchmarks.reference_keras); its JSON, summarised."""
    out = work / "reference.json"
    cmd = [
        sys.executable, "-m", "benchmarks.reference_keras", str(data_dir), str(out),
        "--epochs", str(args.epochs), "--weights", args.reference_weights, "--seed", str(args.seed),
        "--predict-n", str(args.predict_n), "--predict-batch", str(args.predict_batch),
        "--latency-n", str(args.latency_n),
    ]
    log(f"reference (Keras {args.reference_weights} weights): training, {args.epochs} epochs, batch 128")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"the Keras reference failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    raw = json.loads(out.read_text())
    n, bs = raw["n_train"], raw["batch_size"]
    records = []
    for ends in raw["batch_end_s"]:
        sizes = [min(bs, n - i * bs) for i in range(len(ends))]
        starts = [0.0, *ends[:-1]]
        records.append([(s, e - b) for s, b, e in zip(sizes, starts, ends, strict=True)])
    best = raw["best_epoch"]
    return {
        "weights_used": raw["weights_used"],
        "recipe": {"batch_size": bs, "lr": 1e-3, "schedule": "plateau", "label_smoothing": 0.0, "tta": "none"},
        "epochs_run": raw["epochs_run"],
        "best_epoch": best,
        "history": raw["history"],
        "train_images_per_s": steady_throughput(records),
        "fit_s": raw["fit_s"],
        "time_to_accuracy_s": raw["epoch_end_s"][best - 1],
        "test_accuracy": raw["test_accuracy"],
        "predict_images_per_s": raw["predict_n"] / raw["predict_s"],
        "latency_ms_p50": percentile_ms(raw["latency_s"], 50),
        "latency_ms_p95": percentile_ms(raw["latency_s"], 95),
        "threads": raw["threads"],
        "versions": raw["versions"],
        "process_wall_s": wall,
    }


# ---------------------------------------------------------------- the run


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """The headline figures and realfake/reference ratios (each oriented so that higher is better)."""
    models = results["models"]
    ref = models.get("reference", {})
    key = {"seed-resnet50": "seed_resnet50", "fast": "fast"}
    accuracy = {"reference": ref.get("test_accuracy")}
    ratios: dict[str, float | None] = {}
    pipeline: dict[str, float] = {}  # realfake against itself: prediction from files / the bare model
    for name, short in key.items():
        m = models.get(name)
        if m is None:
            continue
        accuracy[short] = m["test_accuracy"]
        ratios[f"{short}_train_throughput"] = ratio(m["train_images_per_s"], ref.get("train_images_per_s"))
        ratios[f"{short}_predict_throughput"] = ratio(m["predict_images_per_s"], ref.get("predict_images_per_s"))
        ratios[f"{short}_latency_p50"] = ratio(ref.get("latency_ms_p50"), m["latency_ms_p50"])
        ratios[f"{short}_time_to_accuracy"] = ratio(ref.get("time_to_accuracy_s"), m["time_to_accuracy_s"])
        files = m.get("predict_from_files")
        if files is not None:
            ratios[f"{short}_predict_from_files_throughput"] = ratio(
                files["from_files_images_per_s"], ref.get("predict_images_per_s"))
            pipeline[f"{short}_predict_from_files_vs_bare_model"] = files["ratio"]
        onnx = m.get("onnx", {})
        if "predict_images_per_s" in onnx:
            ratios[f"{short}_onnx_predict_throughput"] = ratio(
                onnx["predict_images_per_s"], ref.get("predict_images_per_s")
            )
    return {"accuracy": accuracy, "ratios": ratios, "pipeline": pipeline}


def table(results: dict[str, Any]) -> str:
    """The results as a Markdown table (also what README's Speed section shows)."""
    rows = [
        ("train img/s (steady)", "train_images_per_s", "{:,.0f}"),
        ("time to accuracy, s", "time_to_accuracy_s", "{:,.1f}"),
        ("test accuracy", "test_accuracy", "{:.4f}"),
        ("epochs run (best)", None, ""),
        ("predict img/s", "predict_images_per_s", "{:,.0f}"),
        ("latency p50 / p95, ms", None, ""),
        ("ONNX Runtime predict img/s", None, ""),
    ]
    names = [n for n in ("reference", *REALFAKE_MODELS) if n in results["models"]]
    head = ["", *("Keras reference" if n == "reference" else n for n in names)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, key, fmt in rows:
        cells = [label]
        for n in names:
            m = results["models"][n]
            if key is not None:
                v = m.get(key)
                cells.append(fmt.format(v) if isinstance(v, int | float) and math.isfinite(v) else "n/a")
            elif label.startswith("epochs"):
                cells.append(f"{m['epochs_run']} ({m['best_epoch']})")
            elif label.startswith("latency"):
                cells.append(f"{m['latency_ms_p50']:.1f} / {m['latency_ms_p95']:.1f}")
            else:
                onnx = m.get("onnx", {})
                cells.append(f"{onnx['predict_images_per_s']:,.0f}" if "predict_images_per_s" in onnx else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    r = results["ratios"]
    lines.append("")
    lines.append(
        "ratios realfake / reference: "
        + ", ".join(f"{k} {v:.1f}x" for k, v in r.items() if v is not None)
    )
    for n in names:
        files = results["models"][n].get("predict_from_files")
        if files is not None:
            from benchmarks.predict_files import files_line

            lines.append(files_line(n, files))
    c = results["cache"]
    lines.append(
        f"cache: {c['n_images']:,} JPEGs decoded at {c['decode_images_per_s']:,.0f} images/s (cold), "
        f"reloaded in {c['reload_s']:.3f} s"
        + (f"; full zip {c['full']['n_images']:,} at {c['full']['decode_images_per_s']:,.0f} images/s, "
           f"reload {c['full']['reload_s']:.3f} s" if "full" in c else "")
    )
    m = results["machine"]
    lines.append(
        f"machine: {m['cpu']}, {m['cores']} cores, GPU {m['gpu'] or 'none'}, torch threads {m['torch_threads']}, "
        f"load average {m['load_average_start'][0]:.1f} -> {m['load_average_end'][0]:.1f}"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CIFAKE-layout zip (default: the stand-in)")
    p.add_argument("--limit", type=int, default=3000, help="images in the stratified subset (70/20/10 split)")
    p.add_argument("--epochs", type=int, default=3, help="epoch budget, the same for every model")
    p.add_argument("--models", default="reference,seed-resnet50,fast", help="comma-separated: reference, "
                   + ", ".join(REALFAKE_MODELS))
    p.add_argument("--weights", default="auto", help="realfake --weights for seed-resnet50 (auto|imagenet|none)")
    p.add_argument("--reference-weights", default="auto", choices=["auto", "imagenet", "none"])
    p.add_argument("--device", default="auto", help="realfake device (auto|cpu|cuda)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--predict-n", type=int, default=2048, help="images per prediction-throughput measurement")
    p.add_argument("--predict-batch", type=int, default=1024, help="the reference's predict batch size")
    p.add_argument("--latency-n", type=int, default=50, help="single-image predictions timed per model")
    p.add_argument("--files-n", type=int, default=4096, help="JPEG files for 'predict from files' (0: skip it)")
    p.add_argument("--files-reps", type=int, default=3, help="'predict from files' runs beside the bare model")
    p.add_argument("--files-models", default="fast", help="comma-separated models timed predicting from files")
    p.add_argument("--full-decode", action=argparse.BooleanOptionalAction, default=True,
                   help="also build the cache of the whole zip cold (the decode-speed figure at full size)")
    p.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--progress", action="store_true", help="show realfake's training progress bars")
    a = p.parse_args(argv)
    a.models = [m.strip() for m in a.models.split(",") if m.strip()]
    a.files_models = [m.strip() for m in a.files_models.split(",") if m.strip()]
    unknown = set(a.models) - {"reference", *REALFAKE_MODELS}
    if unknown:
        p.error(f"unknown --models {', '.join(sorted(unknown))}")
    return a


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark; returns the JSON file written."""
    args = parse_args(argv)
    if not args.data.is_file():
        raise SystemExit(f"benchmark data not found: {args.data} (pass --data or set REALFAKE_SHARED_DATA)")
    from realfake.data.splits import make_split

    started = datetime.now(timezone.utc)
    results: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine_info(),
        "models": {},
        "notes": [],
    }
    old_cache = os.environ.get("REALFAKE_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="realfake-bench-") as tmp:
        work = Path(tmp)
        try:
            log(f"data prep: building realfake's cache of {args.limit} images cold")
            ds, cache = measure_cache(args.data, args.limit, args.seed, work / "cache")
            if args.full_decode:
                log("data prep: building the cache of the whole zip cold")
                _, full = measure_cache(args.data, None, args.seed, work / "cache-full")
                cache["full"] = full
                import shutil

                shutil.rmtree(work / "cache-full", ignore_errors=True)
            results["cache"] = cache
            split = make_split(ds.labels, ds.splits, "seed", args.seed)
            results["split"] = {k: int(len(v)) for k, v in split.items()}
            for name in REALFAKE_MODELS:
                if name in args.models:
                    results["models"][name] = run_realfake(name, ds, split, args, work / "runs")
                    log(f"{name}: {json.dumps({k: results['models'][name][k] for k in _BRIEF}, default=str)}")
            if "reference" in args.models:
                tree = work / "tree"
                extract_split_tree(args.data, ds, split, tree)
                results["models"]["reference"] = run_reference(tree, args, work)
                log(f"reference: {json.dumps({k: results['models']['reference'][k] for k in _BRIEF})}")
        finally:
            if old_cache is None:
                os.environ.pop("REALFAKE_CACHE_DIR", None)
            else:
                os.environ["REALFAKE_CACHE_DIR"] = old_cache
    results["machine"]["load_average_end"] = list(os.getloadavg())
    if "reference" in results["models"]:
        results["machine"]["tf_threads"] = results["models"]["reference"]["threads"]
    results.update(summarise(results))
    results["wall_s"] = (datetime.now(timezone.utc) - started).total_seconds()
    name = f"{started.strftime('%Y-%m-%d')}-{socket.gethostname()}.json"
    path = args.out_dir / name
    atomic_write_json(path, results)
    print(table(results))
    print(f"\nwrote {path}")
    return path


_BRIEF = ("train_images_per_s", "test_accuracy", "time_to_accuracy_s", "predict_images_per_s", "latency_ms_p50")

if __name__ == "__main__":
    main()
