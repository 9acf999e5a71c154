"""The `adapt` command: a trained run meets a new generator, and the user has a few hundred labelled images
of it. Re-fit the run's calibration on them, and optionally fine-tune the model's head, into a NEW run folder.

Why this and not retraining: on a generator it never saw, a detector's *ranking* usually transfers while its
*decision* does not (docs/performance.md#figures-behind-the-code). The threshold, the temperature and the OOD
quantiles (`calibration.Typicality`) were all fitted on the old generator's validation logits; re-fitting them
on a small labelled set of the new one is cheap (no gradient), needs few images, and leaves the weights exactly
as they were. When the ranking itself is off, `finetune_head` also trains the model's last layers
(`model.head`; every other weight, and every BatchNorm statistic, stays frozen) on part of the set and
calibrates on the rest, so the calibration is never fitted on the images the head was just trained on.

The parent run is only read. The child is written whole into a temporary sibling folder and swapped in at
the end (`atomic_dir`, every file through `RunDir`), so a failure leaves no half run. It holds what a trained
run holds for prediction (config.yaml, model.safetensors, run.json, and the parent's split.json and
data_report.json, so `realfake evaluate NEW` still tests on the parent's own test split), so Detector.load,
predict, evaluate, serve and export work on it unchanged. run.json records `parent` (path, name and its
calibration) and `adapted_on` (the set, its counts per class, what was re-fitted or fine-tuned, the split).

The child's report.html and MODEL_CARD.md are written at once and name the parent, the set and what was fitted
on it. Its home figures are measured, not inherited: a calibration-only child keeps the parent's weights, so
the parent's recorded test-split logits (predictions.csv) are re-scored with the new calibration, for free; a
fine-tuned head changes the logits, and its report says the test split is not measured until `realfake
evaluate CHILD` (which runs the model on the parent's split: as costly as the parent's own evaluation).
"""

from __future__ import annotations

__side__ = "training"  # see tests/test_layers.py

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from realfake.atomic import WriteError, atomic_dir, check_writable
from realfake.calibration import Calibration, calibrate, parse_policy
from realfake.config import MAX_LR, RunConfig
from realfake.contract import CLASS_NAMES, __version__
from realfake.data.batches import train_batches
from realfake.data.cache import load_dataset
from realfake.data.tensors import to_device_uint8
from realfake.device import seeded, select_device
from realfake.errors import RealfakeError
from realfake.evaluation import Log, log_to_stderr, metrics_line, rescore_predictions
from realfake.fit import check_finite, state_to_cpu, train_epoch
from realfake.infer import TorchBackend
from realfake.models import load_weights
from realfake.rundir import RunDir

MIN_IMAGES = 20  # below this neither a temperature nor a threshold means anything
MIN_PER_CLASS = 5  # per class, and per part when the set is split for fine-tuning
FINETUNE_EPOCHS = 5
FINETUNE_LR = 1e-3
FINETUNE_BATCH = 64
CALIBRATION_SHARE = 0.5  # with --finetune-head: this share of each class calibrates, the rest trains the head
COPIED = (RunDir.SPLIT, RunDir.DATA_REPORT)  # the parent's training facts, still true of the child's backbone


@dataclass(frozen=True)
class AdaptOptions:
    """How to adapt: calibration only (the default), or also fine-tune the head on part of the set."""

    finetune_head: bool = False
    epochs: int = FINETUNE_EPOCHS
    lr: float = FINETUNE_LR
    calibration_share: float = CALIBRATION_SHARE
    threshold_policy: str | None = None  # None: the parent's policy
    seed: int = 0
    overwrite: bool = False
    device: str = "auto"


def adapt(
    run_dir: str | Path, data: str | Path, out: str | Path | None = None, options: AdaptOptions = AdaptOptions(),
    *, progress: bool = True, log: Log = log_to_stderr,
) -> Path:
    """Adapt the run at `run_dir` to the labelled set `data` (any layout the data loader reads: REAL/ and
    FAKE/ folders, a zip, a CSV list); returns the new run folder (default: RUN-adapted-<data name>)."""
    _check_options(options)
    parent = _parent(run_dir)
    child = RunDir(out) if out is not None else parent.adapted(data)
    _check_out(parent, child, options.overwrite)
    ds = load_dataset(data, None, options.seed, parent.config().workers, progress)
    log(f"data: {len(ds):,} images from {ds.source_name} ({len(ds.skipped)} unreadable skipped)")
    return adapt_arrays(parent.path, np.asarray(ds.images), ds.labels, ds.source_name, child.path, options,
                        log=log, n_skipped=len(ds.skipped))


def adapt_arrays(
    run_dir: str | Path, images: np.ndarray, labels: np.ndarray, data_name: str, out: str | Path,
    options: AdaptOptions = AdaptOptions(), *, log: Log = log_to_stderr, n_skipped: int = 0,
) -> Path:
    """`adapt` on images already decoded ((N, 32, 32, 3) uint8 and 0/1 labels): what the benchmark calls."""
    o = options
    _check_options(o)
    parent, child = _parent(run_dir), RunDir(out)
    _check_out(parent, child, o.overwrite)
    y = np.asarray(labels).astype(np.int64).ravel()
    _check_set(y, data_name, o.finetune_head, o.calibration_share)
    cfg = parent.config()
    info = parent.info()
    parent_cal = Calibration.from_info(info, cfg.threshold)
    if o.threshold_policy is not None:
        cfg.threshold_policy = str(parse_policy(o.threshold_policy))
    torch_device = select_device(o.device)
    model = load_weights(cfg.model, parent / RunDir.WEIGHTS)

    cal_idx, tune_idx = (split_for_finetune(y, o.calibration_share, o.seed) if o.finetune_head
                         else (np.arange(len(y)), None))
    finetuned: dict[str, Any] | None = None
    state: dict[str, torch.Tensor] | None = None
    if tune_idx is not None:
        with seeded(o.seed, torch_device):  # the seed repeats the fine-tuning; the caller's random state is left alone
            losses = finetune(model, images[tune_idx], y[tune_idx], torch_device, epochs=o.epochs, lr=o.lr,
                              seed=o.seed)
        state = state_to_cpu(model)  # checked here, written as is with the child
        check_finite(state, f"the fine-tuned weights (lr {o.lr:g})")
        finetuned = {"layers": "head", "epochs": o.epochs, "lr": o.lr, "batch_size": FINETUNE_BATCH,
                     "train_loss": [round(v, 6) for v in losses], "images": _counts(y[tune_idx])}
        log(f"fine-tuned the head for {o.epochs} epochs on {len(tune_idx)} images (loss {losses[0]:.4f} -> "
            f"{losses[-1]:.4f})")
    # The same memory layout and test-time augmentation as a loaded run, so run.json holds what Detector.load
    # will compute.
    model = model.to(memory_format=torch.contiguous_format)
    backend = TorchBackend(model, torch_device, parent_cal.tta)
    logits = backend.logits(np.asarray(images[cal_idx]), cfg.eval_batch_size)
    cal = calibrate(logits, y[cal_idx], cfg.policy, cfg.uncertain, parent_cal.tta,
                    cfg.ood_level if parent_cal.ood is not None else None)
    refit = ["temperature", "threshold"] + (["ood"] if cal.ood is not None else [])
    adapted_on = {
        "data": data_name,
        "n_images": int(len(y)),
        "per_class": _counts(y),
        "n_skipped": n_skipped,
        "refit": refit,
        "calibration_images": _counts(y[cal_idx]),
        "finetuned": finetuned,
        "seed": o.seed,
    }
    child_info = {
        **{k: v for k, v in info.items() if k not in Calibration().to_info()},
        **cal.to_info(),
        "status": "adapted",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "realfake": __version__,
        "parent": {"path": str(parent.path.resolve()), "name": parent.path.name, **parent_cal.to_info()},
        "adapted_on": adapted_on,
    }
    # re-scored with the calibration as stored, the one every consumer of the child will apply
    home = None if finetuned else _rescored_home(parent, Calibration.from_info(child_info, cfg.threshold))
    _write_child(parent, child, cfg, child_info, state, home)
    log(f"calibration on {len(cal_idx)} images of {data_name}: temperature {parent_cal.temperature:.3f} -> "
        f"{cal.temperature:.3f}, threshold {parent_cal.threshold:.4f} -> {cal.threshold:.4f} ({cal.threshold_policy})")
    if home is not None:
        log(metrics_line(home[0], "parent's test split, re-scored"))
    else:
        log(f"test split not measured for the new weights: run `realfake evaluate {child.path}`")
    _write_report(child, log)
    return child.path


def _rescored_home(parent: RunDir, cal: Calibration) -> tuple[dict[str, Any], str] | None:
    """The child's metrics.json and predictions.csv on the parent's test split: the parent's recorded logits
    under the child's calibration (the weights are the parent's); None when the parent recorded none."""
    scored = rescore_predictions(parent, cal)
    if scored is None:
        return None
    metrics, predictions = scored
    parent_metrics = parent.read_json(RunDir.METRICS)
    for key in ("compute_precision", "sources_unseen_in_training"):  # facts of the logits and the split, unchanged
        if key in parent_metrics:
            metrics[key] = parent_metrics[key]
    metrics["rescored_from"] = {"run": parent.path.name, "path": str(parent.path.resolve()),
                                "file": RunDir.PREDICTIONS, "why": "only the calibration was re-fitted: the weights, "
                                "and so the logits on the parent's test split, are the parent's"}
    return metrics, predictions


def _write_report(child: RunDir, log: Log) -> None:
    """report.html and MODEL_CARD.md at once, so an adapted run is never shared without saying where it comes
    from; a failure to write them names `realfake report CHILD`, the child itself being complete."""
    from realfake import report

    log(f"report: {report.build(child.path, need_metrics=False)}")


# --- checks: one line each, before any work --------------------------------------------------------------


def _parent(run_dir: str | Path) -> RunDir:
    parent = RunDir(run_dir)
    if not parent.path.is_dir():
        raise RealfakeError(f"{parent.path} is not a run directory (no such folder)")
    parent.require(RunDir.CONFIG, RunDir.WEIGHTS)
    parent.info()  # a damaged run.json fails now, in one line
    return parent


def _check_out(parent: RunDir, child: RunDir, overwrite: bool) -> None:
    """The child never is, holds or sits inside the parent; only a run realfake made is ever replaced, and only
    when told (`--overwrite`): a user's other folder, or a copy of the parent, is never removed."""
    p, c = parent.path.resolve(), child.path.resolve()
    if c == p or p.is_relative_to(c) or c.is_relative_to(p):
        raise RealfakeError(f"--out {child.path} would change the parent run {parent.path}: pick a folder outside it")
    if child.path.is_symlink() or (child.path.exists() and not child.path.is_dir()):
        raise RealfakeError(f"--out {child.path} is not a folder: pick another --out")
    if child.path.exists() and any(child.path.iterdir()):
        if not overwrite:
            raise RealfakeError(f"{child.path} already exists: pick another --out, or pass --overwrite to replace it")
        if not _is_run(child):
            raise RealfakeError(f"--overwrite replaces only a run folder realfake made, and {child.path} is not one "
                                f"(no {RunDir.CONFIG} and {RunDir.INFO}): pick another --out")
    check_writable(child / RunDir.CONFIG)


def _is_run(folder: RunDir) -> bool:
    """A folder `train` or `adapt` wrote: its config and run.json are there and run.json names a model."""
    if not (folder.has(RunDir.CONFIG) and folder.has(RunDir.INFO)):
        return False
    try:
        return isinstance(folder.info().get("model"), str)
    except RealfakeError:
        return False


def _check_options(o: AdaptOptions) -> None:
    """Settings that would fail midway (a seed numpy refuses) or train to NaN weights (an infinite rate)."""
    if not 0 <= o.seed < 2**32:
        raise RealfakeError(f"--seed must be between 0 and {2**32 - 1}; got {o.seed}")
    if o.finetune_head and (o.epochs < 1 or not 0 < o.lr <= MAX_LR):  # NaN fails the comparison too
        raise RealfakeError(f"fine-tuning needs at least 1 epoch and a learning rate above 0 and at most {MAX_LR:g}; "
                            f"got {o.epochs}, {o.lr}")


def _check_set(y: np.ndarray, name: str, finetune_head: bool, calibration_share: float) -> None:
    counts = _counts(y)
    missing = [c for c, n in counts.items() if n == 0]
    if missing:
        raise RealfakeError(f"{name} has only one class (no {', '.join(missing)} images): adapting needs both")
    if len(y) < MIN_IMAGES or min(counts.values()) < MIN_PER_CLASS:
        raise RealfakeError(f"{name} has too few images to adapt on ({_said(counts)}): at least {MIN_IMAGES} in all "
                            f"and {MIN_PER_CLASS} per class")
    if finetune_head:
        if not 0 < calibration_share < 1:
            raise RealfakeError(f"the calibration share must be between 0 and 1; got {calibration_share}")
        least = min(counts.values())
        if min(math.ceil(least * calibration_share), least - math.ceil(least * calibration_share)) < MIN_PER_CLASS:
            raise RealfakeError(f"{name} has too few images to fine-tune and calibrate on separate parts "
                                f"({_said(counts)}): at least {MIN_PER_CLASS} per class in each part")


def _counts(y: np.ndarray) -> dict[str, int]:
    return {c: int((y == i).sum()) for i, c in enumerate(CLASS_NAMES)}


def _said(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {c}" for c, n in counts.items())


# --- fine-tuning the head -------------------------------------------------------------------------------


def split_for_finetune(labels: np.ndarray, calibration_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, fine-tuning) indices: per class, a seeded `calibration_share` calibrates, the rest trains."""
    rng = np.random.default_rng(seed)
    cal: list[np.ndarray] = []
    tune: list[np.ndarray] = []
    for c in range(len(CLASS_NAMES)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = math.ceil(len(idx) * calibration_share)
        cal.append(idx[:k])
        tune.append(idx[k:])
    return np.sort(np.concatenate(cal)), np.sort(np.concatenate(tune))


def head_of(model: nn.Module) -> nn.Module:
    """The model's last layer(s): every registered model names them `head` (see realfake.models)."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        raise RealfakeError(f"{type(model).__name__} has no `head` to fine-tune")
    return head


def finetune(
    model: nn.Module, images: np.ndarray, labels: np.ndarray, device: torch.device, *, epochs: int = FINETUNE_EPOCHS,
    lr: float = FINETUNE_LR, batch_size: int = FINETUNE_BATCH, seed: int = 0,
) -> list[float]:
    """Train only `model.head` (Adam, class-balanced BCE, random flips as in training); returns each epoch's loss.

    The model stays in eval mode: dropout is off and no BatchNorm statistic moves, so outside the head's
    parameters the weights file is byte for byte the parent's.
    """
    head = head_of(model)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(head.parameters())
    for p in params:
        p.requires_grad_(True)
    x = to_device_uint8(np.ascontiguousarray(images), device)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float32, device=device)
    n_fake = float(y.sum())
    pos_weight = torch.tensor((len(y) - n_fake) / max(n_fake, 1.0), device=device)  # a lopsided set still balances
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)

    def loss_of(logits: torch.Tensor, yb: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        loss = nn.functional.binary_cross_entropy_with_logits(logits, yb, pos_weight=pos_weight)
        return loss, loss.detach() * len(yb)

    losses = []
    for _ in range(epochs):  # training's own batch stream (shuffle, random flips) and step, without its BatchNorm
        sums = train_epoch(model, train_batches(x, y, batch_size, gen), opt, loss_of, device=device)
        total, _, seen = sums.tolist()
        losses.append(total / max(seen, 1))
    for p in model.parameters():
        p.requires_grad_(True)
    return losses


# --- writing the child ---------------------------------------------------------------------------------------


def _write_child(
    parent: RunDir, child: RunDir, cfg: RunConfig, info: dict[str, Any], state: dict[str, torch.Tensor] | None,
    home: tuple[dict[str, Any], str] | None = None,
) -> None:
    """Every file of the child, written into a temporary sibling and swapped in whole; `home`: its metrics.json
    and predictions.csv on the parent's test split."""
    cfg = cfg.model_copy(update={"out": str(child.path)})
    weights = safetensors_bytes(state) if state is not None else (parent / RunDir.WEIGHTS).read_bytes()
    try:
        with atomic_dir(child.path) as tmp:
            tmp.chmod(0o755)  # mkdtemp makes 0700; a run folder is shared like one `train` makes
            new = RunDir(tmp)
            new.write_config(cfg)
            new.write_bytes(RunDir.WEIGHTS, weights)
            for name in COPIED:
                if parent.has(name):
                    new.write_bytes(name, (parent / name).read_bytes())
            new.write_json(RunDir.INFO, info)
            if home is not None:
                new.write_json(RunDir.METRICS, home[0])
                new.write_text(RunDir.PREDICTIONS, home[1])
    except WriteError as e:  # named after the child's own file, not its temporary folder's
        raise WriteError(child / e.path.name, e.error) from None
    except OSError as e:
        raise WriteError(child.path, e) from None
