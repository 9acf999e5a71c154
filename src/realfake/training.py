"""The `train` command (and `train --resume`): data -> split -> model -> fit -> calibrate -> evaluate ->
report, all in one run folder.

The CLI only parses options and prints; this module orchestrates and the pieces do the work. After fitting,
the model that was just trained becomes a `Detector` in memory, and that one Detector is calibrated on the
validation split and evaluated on the test split: what the run reports is what `Detector.load(run)` gives.

(The module is `training`, not `train`: `realfake.train` is the public function, and a submodule of the
same name would replace it on the package once imported.)
"""

from __future__ import annotations

__side__ = "training"  # see tests/test_layers.py

import platform
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from realfake import report
from realfake.atomic import WriteError, check_writable, existing_dir
from realfake.calibration import Calibration, calibrate
from realfake.config import RunConfig, validated
from realfake.contract import CLASS_NAMES, __version__
from realfake.data.cache import Dataset
from realfake.data.extra import check_extra_fakes, check_protocol_against, mix_into_split, own_part, saved_form
from realfake.data.splits import make_split, split_from_json, split_to_json
from realfake.detector import Detector
from realfake.device import Precision, resolve_precision, seeded, select_device
from realfake.distributed import (
    SINGLE,
    World,
    barrier,
    broadcast_text,
    check_global_batch,
    finish,
    start,
    world_from_env,
)
from realfake.errors import RealfakeError
from realfake.evaluation import Log, evaluate_split, log_to_stderr, metrics_line, run_data
from realfake.fit import FitOptions, FitResult, StepObserver, check_sync_batchnorm, fit, save_weights, state_to_cpu
from realfake.infer import TorchBackend, logits_by_chunk
from realfake.models import apply_recipe, build
from realfake.rundir import RunDir
from realfake.tuning import opted_in
from realfake.verbosity import detail


def train(
    cfg: RunConfig | None = None,
    *,
    progress: bool = True,
    log: Log = log_to_stderr,
    on_epoch_end: Callable[[int], None] | None = None,
    step_observer: StepObserver | None = None,
    tuning: bool | None = None,
    **overrides: Any,
) -> Path:
    """Train a new run from a config (or keyword overrides of the defaults); returns the run directory.

    Under torchrun every process calls this: rank 0 names and writes the run folder, builds the data cache
    while the others wait, and finishes the run (calibration, test, report); the others only train.
    `step_observer` (fit.StepObserver) is told of every training step, so a benchmark can time the loop from
    outside it. `tuning=True` lets training change the process for speed (malloc settings, thread count;
    realfake.tuning); None follows the process, which is off unless `realfake.tuning.apply()` ran (the `realfake`
    command).
    """
    with opted_in(tuning):
        return _train(cfg, progress, log, on_epoch_end, step_observer, overrides)


def _train(
    cfg: RunConfig | None, progress: bool, log: Log, on_epoch_end: Callable[[int], None] | None,
    step_observer: StepObserver | None, overrides: dict[str, Any],
) -> Path:
    cfg = cfg or RunConfig()
    if overrides:
        cfg = validated(RunConfig, {**cfg.model_dump(exclude_unset=True), **overrides})  # unset stays unset
    world = world_from_env()
    if not world.is_main:
        log, progress = _silent, False
    device = start(world, select_device(cfg.device))
    try:
        run = RunDir(broadcast_text(str(cfg.out or RunDir.default(cfg.model).path), world))
        check_writable(run / RunDir.CONFIG)  # a file in the way or a read-only folder: say so before the data loads
        if run.path.exists() and any(run.path.iterdir()):  # every rank looks before rank 0 writes (after the data)
            raise RealfakeError(
                f"{run.path} already holds files: continue it with --resume {run.path}, or pick --out")
        precision = resolve_precision(device, cfg.precision)  # bf16 on a GPU without it fails now, not after the data
        if cfg.extra_fakes is not None:
            check_extra_fakes(cfg.extra_fakes)  # a missing set or a REAL image in it: now, before the data loads
        ds = _shared_data(cfg, progress, log, world)
        own = own_part(ds)  # the split is the data's own; extra fakes then take a share of its FAKE training slots
        split = make_split(own.labels, own.splits, cfg.protocol, cfg.seed, own.sources)
        extra_info = None
        if cfg.extra_fakes is not None:
            check_protocol_against(ds, cfg.protocol, cfg.extra_fakes)
            split, extra_info = mix_into_split(ds, split, cfg.extra_fakes_share, cfg.seed, cfg.extra_fakes)
            log(f"extra fakes: {extra_info['n_used']:,} in training ({extra_info['share']:.0%} of its FAKE images), "
                f"families {', '.join(extra_info['per_family'])}; validation and test: {own.source_name} alone")
        with seeded(cfg.seed, device):  # the model's initialisation is part of what --seed repeats; not the caller's
            built = build(cfg.model, cfg.weights)
        cfg = apply_recipe(cfg, built.recipe)  # the model's training defaults, for options the user left unset
        check_global_batch(cfg.batch_size, world)  # before the run folder is written
        check_sync_batchnorm(cfg, device)
        cfg.out = str(run.path)
        if cfg.data is not None:  # saved absolute, so evaluate/resume work from any working directory
            cfg.data = str(Path(cfg.data).expanduser().resolve())
        if cfg.extra_fakes is not None:
            cfg.extra_fakes = saved_form(cfg.extra_fakes)
        if world.is_main:
            try:
                run.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise WriteError(run.path, e) from None
            try:
                _write_run_files(run, cfg, ds, split, built.weights_used, device, world, extra_info)
            except WriteError as e:  # no checkpoint yet, so nothing to resume; the folder is no longer empty
                then = f"delete {run.path} (it holds no checkpoint yet) or pick another --out, and train again"
                raise e.then(then) from None
        log(f"run: {run.path}  model: {cfg.model} ({built.weights_used})  device: {device}  "
            f"precision: {precision.name}{_processes(world, device)}  epochs: {cfg.epochs}")
        _precision_detail(precision, world)
        return _fit_and_finish(run, cfg, ds, split, built.model, device, False, progress, log, on_epoch_end, world,
                                step_observer)
    finally:
        finish(world)


def _precision_detail(precision: Precision, world: World) -> None:
    """Why this precision (the CPU's instruction sets, the GPU): a detail, shown with -v, once per run."""
    if world.is_main:
        detail(f"precision: {precision.name} ({precision.reason})")


def _silent(message: str) -> None:
    """The log of ranks other than 0: one voice per run."""


def _processes(world: World, device: torch.device) -> str:
    if not world.distributed:
        return ""
    return f"  processes: {world.size} (DistributedDataParallel, {'nccl' if device.type == 'cuda' else 'gloo'})"


def _shared_data(cfg: RunConfig, progress: bool, log: Log, world: World) -> Dataset:
    """The run's data set; under torchrun rank 0 decodes and caches it first and the others then read the cache."""
    if world.is_main:
        ds = run_data(cfg, progress, log)
        barrier(world)
        return ds
    barrier(world)
    return run_data(cfg, progress, log)


def _write_run_files(
    run: RunDir, cfg: RunConfig, ds: Dataset, split: dict[str, np.ndarray], weights_used: str, device: torch.device,
    world: World = SINGLE, extra_fakes: dict[str, Any] | None = None,
) -> None:
    """What a run holds before its first epoch: config, split, data report, run.json (with `extra_fakes`, what
    the extra fakes added to training, in both: the data report's counts are the data's own images)."""
    run.write_config(cfg)
    run.write_json(RunDir.SPLIT, split_to_json(split, protocol=cfg.protocol, seed=cfg.seed, data_key=ds.key))
    extra = {"extra_fakes": extra_fakes} if extra_fakes is not None else {}
    run.write_json(
        RunDir.DATA_REPORT,
        {**own_part(ds).report(), "split": _split_summary(ds, split, cfg.protocol),
         "split_sources": _split_sources(ds, split), **extra},
    )
    run.write_json(
        RunDir.INFO,
        {
            "model": cfg.model,
            "weights_used": weights_used,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "status": "training",
            "threshold": cfg.threshold,
            "device": str(device),
            **resolve_precision(device, cfg.precision).to_info(),
            "realfake": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_threads": torch.get_num_threads(),
            "processes": world.size,
            **extra,
        },
    )


def resume(
    run_dir: str | Path,
    *,
    epochs: int | None = None,
    progress: bool = True,
    log: Log = log_to_stderr,
    on_epoch_end: Callable[[int], None] | None = None,
    step_observer: StepObserver | None = None,
    tuning: bool | None = None,
) -> Path:
    """Continue an interrupted run from its last checkpoint (optionally with a new epoch budget); `step_observer`
    and `tuning` as for `train`."""
    with opted_in(tuning):
        return _resume(run_dir, epochs, progress, log, on_epoch_end, step_observer)


def _resume(
    run_dir: str | Path, epochs: int | None, progress: bool, log: Log, on_epoch_end: Callable[[int], None] | None,
    step_observer: StepObserver | None,
) -> Path:
    world = world_from_env()
    if not world.is_main:
        log, progress = _silent, False
    run = RunDir(run_dir)
    run.require(RunDir.CONFIG, RunDir.SPLIT, what="a run directory")
    if existing_dir(run / RunDir.CHECKPOINT) is None:  # resuming without one would start from random weights
        raise RealfakeError(
            f"{run.path} has no {RunDir.CHECKPOINT}/ to resume from: train it anew with "
            f"`realfake train --config {run / RunDir.CONFIG} --out NEW_FOLDER`"
        )
    cfg = run.config()
    run.info()  # a damaged run.json fails now, in one line, not after the epochs it would have cost
    if epochs is not None:
        cfg.epochs = epochs
    check_global_batch(cfg.batch_size, world)
    device = start(world, select_device(cfg.device))
    try:
        if epochs is not None and world.is_main:
            run.write_config(cfg)
        precision = resolve_precision(device, cfg.precision)
        ds = _shared_data(cfg, progress, log, world)
        split = split_from_json(run.read_json(RunDir.SPLIT), len(ds))
        model = build(cfg.model, "none").model  # the checkpoint supplies every weight
        if world.is_main:  # this machine (and this number of processes) may decide differently
            run.update_info(device=str(device), processes=world.size, **precision.to_info())
        log(f"resuming {run.path} on {device}, precision {precision.name}{_processes(world, device)}")
        _precision_detail(precision, world)
        return _fit_and_finish(run, cfg, ds, split, model, device, True, progress, log, on_epoch_end, world,
                                step_observer)
    finally:
        finish(world)


def _split_summary(ds: Dataset, split: dict[str, np.ndarray], protocol: str) -> dict[str, Any]:
    out: dict[str, Any] = {"protocol": protocol}
    for name, idx in split.items():
        counts = np.bincount(ds.labels[idx], minlength=len(CLASS_NAMES))
        out[name] = {"n": int(len(idx)), **{c: int(n) for c, n in zip(CLASS_NAMES, counts, strict=True)}}
    return out


def _split_sources(ds: Dataset, split: dict[str, np.ndarray]) -> dict[str, dict[str, int]]:
    """Images per source in each split: what the model saw in training, for "never seen" statements later."""
    out: dict[str, dict[str, int]] = {}
    for name, idx in split.items():
        counts: dict[str, int] = {}
        for i in idx:
            if (src := ds.sources[int(i)]) is not None:
                counts[src] = counts.get(src, 0) + 1
        out[name] = dict(sorted(counts.items()))
    return out


def _fit_and_finish(
    run: RunDir,
    cfg: RunConfig,
    ds: Dataset,
    split: dict[str, np.ndarray],
    model: torch.nn.Module,
    device: torch.device,
    resuming: bool,
    progress: bool,
    log: Log,
    on_epoch_end: Callable[[int], None] | None,
    world: World = SINGLE,
    step_observer: StepObserver | None = None,
) -> Path:
    options = FitOptions(resume=resuming, on_epoch_end=on_epoch_end, progress=progress, world=world,
                         step_observer=step_observer)
    result = fit(model, ds.images, ds.labels, split, cfg, run.path, device, options)
    if not world.is_main:  # rank 0 alone calibrates, tests and reports, on the same weights
        return run.path
    try:
        metrics = _finish(run, cfg, ds, split, model, device, result, log)
    except WriteError as e:  # the last checkpoint holds every epoch: resuming redoes only these final steps
        raise e.then(f"continue with: realfake train --resume {run.path}") from None
    log(metrics_line(metrics))
    log(f"report: {report.build(run.path)}")  # its own WriteError says `realfake report RUN`
    return run.path


def _finish(
    run: RunDir,
    cfg: RunConfig,
    ds: Dataset,
    split: dict[str, np.ndarray],
    model: torch.nn.Module,
    device: torch.device,
    result: FitResult,
    log: Log,
) -> dict[str, Any]:
    """Weights, calibration, run.json and the test split's figures, after the last epoch."""
    save_weights(state_to_cpu(model), run / RunDir.WEIGHTS)
    # One Detector from here on: calibrated on validation (never the test split it is judged on), then tested.
    # Its model is put in the memory layout a loaded run has (training used channels_last), so the figures
    # below are bit-identical to what `realfake evaluate` and `Detector.load` give later.
    backend = TorchBackend(model.to(memory_format=torch.contiguous_format), device, cfg.tta, cfg.precision)
    val = split["val"]
    val_logits = logits_by_chunk(lambda x: backend.logits(x, cfg.eval_batch_size), ds.images, val, cfg.eval_batch_size)
    cal = calibrate(val_logits, ds.labels[val], cfg.policy, cfg.uncertain, cfg.tta, cfg.ood_level)
    info = run.update_info(
        status="trained",
        epochs_run=len(result.history),
        best_epoch=result.best_epoch,
        stopped_early=result.stopped_early,
        train_seconds=round(sum(r["seconds"] for r in result.history), 2),
        **result.extra,
        **cal.to_info(),
    )
    n = len(result.history)
    log(f"trained {n} epoch{'' if n == 1 else 's'}; best epoch {result.best_epoch}")
    detail(f"calibration (validation): temperature {cal.temperature:.3f}, threshold {cal.threshold:.4f} "
        f"({cal.threshold_policy})")
    # The test split is judged with the calibration as stored (run.json rounds T), exactly as a loaded run is.
    stored = Calibration.from_info(info, cfg.threshold)
    return evaluate_split(run, ds, split["test"], Detector(backend, stored, info, run.path))
