"""realfake vs the original notebook (Keras), on the same data and machine, in one run: `python -m benchmarks.run`.

Measures, and writes to benchmarks/results/bench/<machine>-<date>-<commit>.json (atomically) with a table on stdout:
- data prep: realfake's cache built cold (JPEG images/s decoded, parallel processes) and reloaded warm;
- training throughput (images/s, steady state: the first epoch is left out as warm-up; in a one-epoch run
  its first fifth of the batches), for the Keras reference, `seed-resnet50` and `fast`;
- time-to-accuracy: wall time (validation included) until the end of the epoch whose weights each model
  ends with (early stopping restores the best), and that model's accuracy on a fixed test split;
- inference: images/s on in-memory uint8 images and single-image latency (p50/p95 ms), through realfake's
  Detector (its test-time augmentation included, as a user gets it), and through ONNX Runtime when
  realfake.export is available: the fp32 export and, for --int8-models, its int8 twin (`--quantize int8`,
  calibrated on the run's training images), with both files' test accuracy and the int8/fp32 speed ratio;
- ratios realfake / reference (higher is better for every one of them), the machine (CPU model, the ISA flags
  that decide kernel speed: AVX2, AVX-512, AMX, VNNI, bf16), threads, load at the start and the end;
- realfake's models at each `--precisions` entry (e.g. fp32,bf16) side by side: training and prediction
  images/s and test accuracy at each, with the ratios and the accuracy difference (`precision` in the JSON).
- predict from files (`fast`, in a child process set up as `realfake predict` is; see benchmarks.predict_files):
  `realfake predict`'s path from a folder of JPEGs to JSON lines, beside the bare
  model on the same images in memory, their ratio, and where the pipeline's remaining time goes;

All three models see the same images: a stratified `--limit` subset of the stand-in zip, split 70/20/10
by realfake's `seed` protocol; the reference reads those JPEGs from a temporary CIFAKE-style folder tree
(never inside the repository or the shared data folder), as the notebook read its folders.
The reference runs in a child process so that TensorFlow and PyTorch never share a process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    DEFAULT_DATA,
    REPO,
    RESULTS,
    StepTimer,
    atomic_write_json,
    isa_line,
    log,
    machine_info,
    percentile_ms,
    ratio,
    result_path,
    steady_throughput,
)
from realfake import tuning

REALFAKE_MODELS = ("seed-resnet50", "fast")


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
    name: str, ds: Any, split: dict[str, np.ndarray], args: argparse.Namespace, work: Path,
    precision: str = "auto", extras: bool = True,
) -> dict[str, Any]:
    """Train one registry model with realfake.fit at `precision`, then time prediction through Detector, and,
    with `extras`, through ONNX Runtime and TorchScript (fp32 paths: measured once, not per precision)."""
    import torch
    from safetensors.torch import save_file

    from realfake.config import RunConfig
    from realfake.data.splits import split_to_json
    from realfake.detector import Detector
    from realfake.device import resolve_precision, select_device
    from realfake.fit import FitOptions, fit, state_to_cpu
    from realfake.infer import predict_logits
    from realfake.models import apply_recipe, build
    from realfake.rundir import RunDir

    device = select_device(args.device)
    resolved = resolve_precision(device, precision)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    run_dir = work / f"{name}-{precision}"
    run_dir.mkdir(parents=True)
    torch.manual_seed(args.seed)
    built = build(name, args.weights)
    cfg = RunConfig(model=name, epochs=args.epochs, device=args.device, seed=args.seed, limit=args.limit,
                    weights=args.weights, precision=precision)
    cfg = apply_recipe(cfg, built.recipe)
    flops = flops_per_image(built.model)
    timer = StepTimer(sync)
    log(f"{name}: training {len(split['train'])} images, {args.epochs} epochs, batch {cfg.batch_size} on {device}, "
        f"{resolved.name} ({resolved.reason})")
    result = fit(built.model, ds.images, ds.labels, split, cfg, run_dir, device,
                 FitOptions(progress=args.progress, step_observer=timer))
    seconds = [row["seconds"] for row in result.history]
    best = max(result.best_epoch, 1)
    test_idx = split["test"]
    test_images = np.asarray(ds.images[test_idx])
    logits = predict_logits(built.model, test_images, device, cfg.eval_batch_size, tta=cfg.tta, precision=resolved)
    accuracy = float(((logits > 0) == (ds.labels[test_idx] == 1)).mean())

    # A minimal run directory, enough for Detector.load and realfake.export (data + split: int8 calibration).
    cfg.out, cfg.data = str(run_dir), str(args.data)
    run = RunDir(run_dir)
    run.write_config(cfg)
    run.write_json(RunDir.SPLIT, split_to_json(split, protocol="seed", seed=args.seed, data_key=ds.key))
    save_file(state_to_cpu(built.model), str(run / RunDir.WEIGHTS))
    run.write_json(RunDir.INFO, {"model": name, "threshold": 0.5, "tta": cfg.tta})
    detector = Detector.load(run_dir, device=args.device, precision=precision)
    pred = time_predict(detector.predict_proba, test_images, args, sync)
    from_files = None
    if extras and name in args.files_models and args.files_n > 0:  # the child predicts at the run's own precision
        log(f"{name}: predict from files, {args.files_n} JPEGs, {args.files_reps} runs beside the bare model")
        from benchmarks.predict_files import run_child, write_test_jpegs

        files = write_test_jpegs(args.data, [ds.paths[int(i)] for i in test_idx], args.files_n, work / f"{name}-files")
        from_files = run_child(run_dir, files, args.files_reps, args.device, work / f"{name}-files.json")
    out: dict[str, Any] = {
        **resolved.to_info(),
        "weights_used": built.weights_used,
        "recipe": {k: getattr(cfg, k) for k in ("batch_size", "lr", "schedule", "label_smoothing", "tta")},
        "device": str(device),
        **{k: round(v, 2) for k, v in flops.items()},
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "history": result.history,
        "train_images_per_s": steady_throughput(timer.epochs),
        "fit_s": result.seconds,
        "training_threads": result.extra.get("training_threads", []),  # device.ThreadGovernor's switches, if any
        "time_to_accuracy_s": float(sum(seconds[:best])),
        "test_accuracy": accuracy,
        "test_n": len(test_idx),
        **pred,
    }
    if extras:
        out["onnx"] = run_onnx(run_dir, test_images, ds.labels[test_idx], args, int8=name in args.int8_models)
        if device.type == "cpu":
            out["cpu_inference_variants"] = cpu_inference_variants(built.model, test_images, args)
    if from_files is not None:
        out["predict_from_files"] = from_files
    return out


def cpu_inference_variants(model: Any, images: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Prediction images/s without test-time augmentation: eager PyTorch vs TorchScript frozen and optimised.

    torch.jit.optimize_for_inference folds BatchNorm into the convolutions and runs them through oneDNN with
    fused ReLU, which is what TensorFlow's graph optimiser does for Keras; this measures how much of Keras's
    lead in prediction that accounts for. A measurement only, of the plain model: the product predicts eagerly
    through its own folded and fused copy (realfake.models.fused), which the Detector rows time.
    """
    import torch

    from realfake.infer import predict_logits

    model = model.cpu().eval()
    with torch.inference_mode():
        example = torch.rand(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, example)))
    cpu = torch.device("cpu")
    eager = time_predict(lambda x: predict_logits(model, x, cpu, precision="fp32"), images, args, lambda: None)
    jit = time_predict(lambda x: predict_logits(frozen, x, cpu, precision="fp32"), images, args, lambda: None)
    return {"eager_images_per_s": eager["predict_images_per_s"], "jit_optimized_images_per_s":
            jit["predict_images_per_s"], "jit_optimized_latency_ms_p50": jit["latency_ms_p50"], "precision": "fp32"}


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


ONNX_ROUNDS = 2  # fp32 and int8 timed in turn, each keeping its best round: load bursts hit both alike


def run_onnx(
    run_dir: Path, images: np.ndarray, labels: np.ndarray, args: argparse.Namespace, int8: bool = False
) -> dict[str, Any]:
    """The same run exported by realfake.export and run by ONNX Runtime on the CPU; a note when unavailable.

    With `int8`, also its `--quantize int8` twin, timed in turn with the fp32 file (ONNX_ROUNDS), and both
    files' test accuracy (logit > 0, as for the PyTorch row) and how often their labels agree.
    """
    try:
        import onnxruntime as ort

        from realfake.export import export_onnx
    except ImportError as e:
        return {"skipped": f"realfake.export or onnxruntime not importable ({e})"}
    import torch

    def failed(what: str, e: Exception) -> dict[str, Any]:
        return {"skipped": f"{what} failed: {e.__class__.__name__}: {e}".splitlines()[0][:300]}

    try:
        paths = {"fp32": export_onnx(run_dir)}
    except Exception as e:  # noqa: BLE001 - a benchmark reports a failed export and goes on
        return failed("export", e)
    int8_out: dict[str, Any] = {}
    if int8:
        try:
            paths["int8"] = export_onnx(run_dir, quantize="int8")
        except Exception as e:  # noqa: BLE001 - as above: the fp32 row still stands
            int8_out = failed("int8 export", e)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sessions = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    input_name = sessions["fp32"].get_inputs()[0].name

    def predictor(session: Any) -> Callable[[np.ndarray], Any]:
        return lambda x: session.run(None, {input_name: x})

    best: dict[str, dict[str, float]] = {}
    for _ in range(ONNX_ROUNDS if len(sessions) > 1 else 1):
        for k, session in sessions.items():
            figures = time_predict(predictor(session), images, args, lambda: None)
            if k not in best or figures["predict_images_per_s"] > best[k]["predict_images_per_s"]:
                best[k] = figures
    fake = {k: s.run(["logit"], {input_name: np.ascontiguousarray(images)})[0] > 0 for k, s in sessions.items()}
    accuracy = {k: float((f == (labels == 1)).mean()) for k, f in fake.items()}
    tta = json.loads((run_dir / "run.json").read_text()).get("tta", "none")
    out = {**best["fp32"], "test_accuracy": accuracy["fp32"], "threads": opts.intra_op_num_threads,
           "note": f"ONNX Runtime CPU, test-time augmentation {tta} (inside the graph)"}
    if "int8" in sessions:
        meta = sessions["int8"].get_modelmeta().custom_metadata_map
        int8_out = {
            **best["int8"],
            "test_accuracy": accuracy["int8"],
            "label_agreement_with_fp32": float((fake["int8"] == fake["fp32"]).mean()),
            "speedup_vs_fp32": ratio(best["int8"]["predict_images_per_s"], best["fp32"]["predict_images_per_s"]),
            "quantization": json.loads(meta.get("quantization", "{}")),
        }
    if int8_out:
        out["int8"] = int8_out
    return out


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
        if "speedup_vs_fp32" in onnx.get("int8", {}):  # int8 / fp32 ONNX, side by side (not / the reference)
            ratios[f"{short}_onnx_int8_vs_fp32"] = onnx["int8"]["speedup_vs_fp32"]
            accuracy[f"{short}_onnx_fp32"] = onnx["test_accuracy"]
            accuracy[f"{short}_onnx_int8"] = onnx["int8"]["test_accuracy"]
    return {"accuracy": accuracy, "ratios": ratios, "pipeline": pipeline}


PRECISION_FIELDS = ("train_images_per_s", "predict_images_per_s", "test_accuracy", "time_to_accuracy_s")


def precision_summary(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One model trained and predicted at each asked precision, side by side; each later one against the
    first (the baseline): throughput ratios (higher is better) and the accuracy difference in points."""
    names = list(runs)
    base = runs[names[0]]
    return {
        "baseline": names[0],
        "runs": {p: {"precision": m["precision"], "precision_reason": m["precision_reason"],
                     **{k: m[k] for k in PRECISION_FIELDS}} for p, m in runs.items()},
        "vs_baseline": {
            p: {
                "train_throughput": ratio(m["train_images_per_s"], base["train_images_per_s"]),
                "predict_throughput": ratio(m["predict_images_per_s"], base["predict_images_per_s"]),
                "accuracy_points": round(100 * (m["test_accuracy"] - base["test_accuracy"]), 3),
            }
            for p, m in runs.items() if p != names[0]
        },
    }


def run_contention(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The busy-machine case (issue 11): benchmarks.contention's loop measurement, run here so that the bench JSON
    carries it. It runs alone, after the models, in child processes of its own."""
    from benchmarks import contention

    log(f"contention: `fast`'s training loop on {args.contention} images, alone and beside a 2-thread job")
    out = contention.main(["--loop", "--limit", str(args.contention), "--data", str(args.data),
                           "--out", str(work / "contention.json")])
    record = json.loads(out.read_text())
    return {k: record[k] for k in ("measured", "limit", "batch", "model", "settings")}


def contention_table(results: dict[str, Any]) -> str:
    """The busy-machine rows (empty for a bench JSON without them)."""
    c = results.get("contention")
    if not c:
        return ""
    lines = ["", f"| `{c['model']}`'s training loop ({c['limit']:,} images), thread setting | alone, images/s "
             "| beside a 2-thread PyTorch job | share of a fair share |", "|---|---|---|---|"]
    for name, r in c["settings"].items():
        lines.append(f"| {name} | {r['alone_img_s']:,.0f} | {r['contended_img_s']:,.0f} "
                     f"| {r['share_of_fair']:.0%} |")
    return "\n".join(lines)


def precision_table(results: dict[str, Any]) -> str:
    """Each model's figures at each precision, side by side (empty when only one precision was run)."""
    lines: list[str] = []
    for name, summary in results.get("precision", {}).get("models", {}).items():
        runs = summary["runs"]
        if len(runs) < 2:
            continue
        asked = list(runs)
        later = asked[1:]
        head = [f"`{name}`", *(f"{p} ({runs[p]['precision']})" if p == "auto" else p for p in asked),
                *(f"{p} / {asked[0]}" for p in later)]
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        vs = summary["vs_baseline"]
        for label, key, fmt, cmp in (("training, images/s", "train_images_per_s", "{:,.0f}", "train_throughput"),
                                     ("prediction, images/s", "predict_images_per_s", "{:,.0f}", "predict_throughput"),
                                     ("test accuracy", "test_accuracy", "{:.4f}", "accuracy_points")):
            cells = [label, *(fmt.format(runs[p][key]) for p in asked)]
            for p in later:
                v = vs[p][cmp]
                cells.append("n/a" if v is None else (f"{v:+.2f} points" if cmp == "accuracy_points" else f"{v:.2f}x"))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(v: Any, fmt: str) -> str:
    return fmt.format(v) if isinstance(v, int | float) and math.isfinite(v) else "n/a"


def _times(v: float | None) -> str:
    return f" ({v:.1f}x)" if v is not None else ""


def table(results: dict[str, Any], source: str | Path | None = None) -> str:
    """The Speed table of docs/performance.md, regenerated from a bench JSON (`--table JSON`): the models side by
    side with realfake's ratios to the reference in brackets, each precision's table, the machine and the JSON's
    name."""
    models = results["models"]
    names = [n for n in ("reference", *REALFAKE_MODELS) if n in models]
    ref = models.get("reference", {})
    # The reference is the notebook's architecture: its FLOPs are seed-resnet50's (torch's counter, not Keras's).
    flops_of = {n: models[n] for n in names if "forward_mflop" in models[n]}
    if "reference" in names and "seed-resnet50" in flops_of:
        flops_of["reference"] = flops_of["seed-resnet50"]
    n_test = next((models[n]["test_n"] for n in names if "test_n" in models[n]), None)

    def row(label: str, cell: Any) -> str:
        return "| " + " | ".join([label, *(cell(n, models[n]) for n in names)]) + " |"

    def vs_ref(n: str, key: str, higher: bool = True) -> str:
        if n == "reference":
            return ""
        a, b = models[n].get(key), ref.get(key)
        return _times(ratio(a, b) if higher else ratio(b, a))

    def predict_cell(n: str, m: dict[str, Any]) -> str:
        text = _cell(m.get("predict_images_per_s"), "{:,.0f}")
        tta = m.get("recipe", {}).get("tta", "none")
        without = m.get("cpu_inference_variants", {}).get("eager_images_per_s")
        if tta != "none":
            text += f" with {tta} TTA"
        text += vs_ref(n, "predict_images_per_s")
        if tta != "none" and without is not None:
            text += f"; {without:,.0f} without"
        return text

    def onnx_cell(n: str, m: dict[str, Any]) -> str:
        onnx = m.get("onnx", {})
        if "predict_images_per_s" not in onnx:
            return "" if n == "reference" else "n/a"
        tta = m.get("recipe", {}).get("tta", "none")
        return f"{onnx['predict_images_per_s']:,.0f}" + (f" with {tta} TTA" if tta != "none" else "")  # in the graph

    def int8_cell(n: str, m: dict[str, Any]) -> str:
        onnx = m.get("onnx", {})
        q = onnx.get("int8", {})
        if q.get("speedup_vs_fp32") is None:
            return "" if n == "reference" else "n/a"
        return (f"{q['predict_images_per_s']:,.0f} ({q['speedup_vs_fp32']:.2f}x fp32); accuracy "
                f"{q['test_accuracy']:.4f} vs {onnx['test_accuracy']:.4f}")

    def latency_cell(n: str, m: dict[str, Any]) -> str:
        """PyTorch's, and ONNX Runtime's where the model was exported: for one image it is the faster engine."""
        text = f"{_cell(m.get('latency_ms_p50'), '{:.1f}')} / {_cell(m.get('latency_ms_p95'), '{:.1f}')}"
        onnx = m.get("onnx", {})
        if "latency_ms_p50" in onnx:
            text += f"; ONNX Runtime {onnx['latency_ms_p50']:.1f} / {onnx['latency_ms_p95']:.1f}"
        return text

    def flops_cell(n: str, m: dict[str, Any]) -> str:
        f = flops_of.get(n)
        return f"{f['forward_mflop']:,.0f} M / {f['train_mflop']:,.0f} M" if f else "n/a"

    head = ["", *("Keras reference" if n == "reference" else f"`{n}`" for n in names)]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        row("training, images/s (steady state)",
            lambda n, m: _cell(m.get("train_images_per_s"), "{:,.0f}") + vs_ref(n, "train_images_per_s")),
        row("time to final accuracy, s", lambda n, m: _cell(m.get("time_to_accuracy_s"), "{:,.1f}")),
        row(f"test accuracy ({n_test:,} images)" if n_test else "test accuracy",
            lambda n, m: _cell(m.get("test_accuracy"), "{:.3f}")),
        row("epochs run (best)", lambda n, m: f"{m['epochs_run']} ({m['best_epoch']})"),
        row("prediction, images/s", predict_cell),
        row("via ONNX Runtime, images/s", onnx_cell),
        row("single-image latency p50 / p95, ms", latency_cell),
        row("FLOPs per image, forward / training", flops_cell),
    ]
    if any("int8" in models[n].get("onnx", {}) for n in names):  # bench JSONs from before int8 have no such row
        lines.insert(-2, row("via ONNX Runtime int8 (`--quantize int8`), images/s", int8_cell))
    if extra := precision_table(results):
        lines.append(extra)
    if busy := contention_table(results):
        lines.append(busy)
    m = results["machine"]
    used = sorted({f"{v['precision']} ({v['precision_reason']})" for k, v in models.items()
                   if k != "reference" and "precision" in v})
    load_end = m.get("load_average_end")
    lines.append("")
    lines.append(
        f"Machine: {m['cpu']} ({isa_line(m)}), {m['cores']} cores, GPU {m['gpu'] or 'none'}, torch {m['torch']} "
        f"({m['torch_threads']} threads), load average {m['load_average_start'][0]:.1f} -> "
        + (f"{load_end[0]:.1f}" if load_end else "n/a")
        + (f"; realfake computed in {'; '.join(used)}" if used else "")
        + (f". From `{source}`." if source is not None else ".")
    )
    return "\n".join(lines)


def details(results: dict[str, Any]) -> str:
    """What the table leaves out: every ratio, and the cache's figures."""
    r = results["ratios"]
    lines = ["ratios realfake / reference: "
             + ", ".join(f"{k} {v:.1f}x" for k, v in r.items() if v is not None and not k.endswith("_vs_fp32"))]
    if int8 := {k: v for k, v in r.items() if v is not None and k.endswith("_vs_fp32")}:
        lines.append("int8 / fp32 ONNX Runtime throughput: " + ", ".join(f"{k} {v:.2f}x" for k, v in int8.items()))
    for n, m in results["models"].items():
        if (files := m.get("predict_from_files")) is not None:
            from benchmarks.predict_files import files_line

            lines.append(files_line(n, files))
    c = results["cache"]
    lines.append(
        f"cache: {c['n_images']:,} JPEGs decoded at {c['decode_images_per_s']:,.0f} images/s (cold), "
        f"reloaded in {c['reload_s']:.3f} s"
        + (f"; full zip {c['full']['n_images']:,} at {c['full']['decode_images_per_s']:,.0f} images/s, "
           f"reload {c['full']['reload_s']:.3f} s" if "full" in c else "")
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
    p.add_argument("--precision", default="auto", help="realfake's training and inference precision: auto (bf16 "
                   "where the CPU or GPU has it natively, else fp32) | fp32 | bf16; ONNX Runtime stays fp32")
    p.add_argument("--precisions", default=None, help="comma-separated, e.g. fp32,bf16: train and predict each "
                   "realfake model at each, side by side (the first is the baseline); replaces --precision")
    p.add_argument("--table", type=Path, default=None, metavar="JSON",
                   help="print the tables of a bench JSON written earlier (e.g. a committed one) and exit")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--predict-n", type=int, default=2048, help="images per prediction-throughput measurement")
    p.add_argument("--predict-batch", type=int, default=1024, help="the reference's predict batch size")
    p.add_argument("--latency-n", type=int, default=50, help="single-image predictions timed per model")
    p.add_argument("--int8-models", default="fast", help="comma-separated models whose int8 ONNX twin is measured "
                   "too (each costs a second trace and a calibration: minutes for seed-resnet50 on 2 busy cores)")
    p.add_argument("--files-n", type=int, default=4096, help="JPEG files for 'predict from files' (0: skip it)")
    p.add_argument("--files-reps", type=int, default=3, help="'predict from files' runs beside the bare model")
    p.add_argument("--files-models", default="fast", help="comma-separated models timed predicting from files")
    p.add_argument("--full-decode", action=argparse.BooleanOptionalAction, default=True,
                   help="also build the cache of the whole zip cold (the decode-speed figure at full size)")
    p.add_argument("--contention", type=int, default=0, metavar="N",
                   help="also time `fast`'s training loop on N images alone and beside a 2-thread PyTorch job, "
                   "under realfake's default and fixed thread settings (benchmarks.contention --loop; minutes; "
                   "0: skip it)")
    p.add_argument("--out-dir", type=Path, default=RESULTS,
                   help="results folder: the JSON goes to OUT_DIR/bench/<machine>-<date>-<commit>.json")
    p.add_argument("--progress", action="store_true", help="show realfake's training progress bars")
    a = p.parse_args(argv)
    from realfake.contract import PRECISIONS

    a.precisions = list(dict.fromkeys(x.strip() for x in (a.precisions or a.precision).split(",") if x.strip()))
    if not a.precisions or set(a.precisions) - set(PRECISIONS):
        p.error(f"--precision(s) must name {', '.join(PRECISIONS)}; got {a.precisions}")
    a.precision = a.precisions[0]
    a.models = [m.strip() for m in a.models.split(",") if m.strip()]
    a.int8_models = [m.strip() for m in a.int8_models.split(",") if m.strip()]
    unknown = (set(a.models) - {"reference", *REALFAKE_MODELS}) | (set(a.int8_models) - set(REALFAKE_MODELS))
    a.files_models = [m.strip() for m in a.files_models.split(",") if m.strip()]
    if unknown:
        p.error(f"unknown --models {', '.join(sorted(unknown))}")
    if a.contention < 0:
        p.error(f"--contention must be an image count, or 0 to skip it; got {a.contention}")
    return a


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark; returns the JSON file written."""
    args = parse_args(argv)
    tuning.apply()  # measure what the `realfake` command does, which opts in to realfake.tuning's tricks
    if args.table is not None:
        print(table(json.loads(args.table.read_text()), source=_shown(args.table)))
        return args.table
    if not args.data.is_file():
        raise SystemExit(f"benchmark data not found: {args.data} (pass --data or set REALFAKE_SHARED_DATA)")
    from realfake.data.splits import make_split

    started = datetime.now(timezone.utc)
    results: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine_info(),
        "models": {},
        "precision": {"asked": args.precisions, "models": {}},
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
                if name not in args.models:
                    continue
                runs = {}
                for i, prec in enumerate(args.precisions):
                    runs[prec] = run_realfake(name, ds, split, args, work / "runs", prec, extras=i == 0)
                    log(f"{name} {prec}: {json.dumps({k: runs[prec][k] for k in _BRIEF}, default=str)}")
                results["models"][name] = runs[args.precisions[0]]
                results["precision"]["models"][name] = precision_summary(runs)
            if "reference" in args.models:
                tree = work / "tree"
                extract_split_tree(args.data, ds, split, tree)
                results["models"]["reference"] = run_reference(tree, args, work)
                log(f"reference: {json.dumps({k: results['models']['reference'][k] for k in _BRIEF})}")
            if args.contention:
                results["contention"] = run_contention(args, work)
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
    path = result_path("bench", args.out_dir)
    atomic_write_json(path, results)
    print(table(results, source=_shown(path)))
    print(details(results))
    print(f"\nwrote {path}")
    return path


def _shown(path: Path) -> str:
    """A results file as the docs name it: relative to the repository when it is inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


_BRIEF = ("train_images_per_s", "test_accuracy", "time_to_accuracy_s", "predict_images_per_s", "latency_ms_p50")

if __name__ == "__main__":
    main()
