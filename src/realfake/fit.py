"""The training loop only: Adam, BCE on the logit, the LR schedule, early stopping that restores the best
weights, and an atomic checkpoint after every epoch so that `--resume` continues exactly.

It validates through `realfake.infer` (the same path prediction uses); nothing outside training imports it.
"""

from __future__ import annotations

__side__ = "training"  # see tests/test_layers.py

import csv
import functools
import io
import math
import sys
import time
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn
from tqdm import tqdm

from realfake._kernels.small_maps import small_map_kernels
from realfake.atomic import WriteError, atomic_write_bytes, existing_dir
from realfake.checkpoint import read_checkpoint, write_checkpoint
from realfake.config import RunConfig
from realfake.data.batches import ArtefactSimulation, RobustAugment, train_batches
from realfake.data.placement import choose, place
from realfake.data.tensors import to_device_uint8
from realfake.device import ThreadGovernor, amp_dtype, autocast, keep_freed_memory, seeded
from realfake.distributed import (
    SINGLE,
    World,
    all_sum,
    broadcast_floats,
    check_global_batch,
    gather_interleaved,
    shard_rows,
)
from realfake.errors import RealfakeError
from realfake.infer import predict_logits
from realfake.models.registry import first_non_finite
from realfake.rundir import RunDir
from realfake.tuning import THREAD_GOVERNOR, opted_in, record
from realfake.tuning import enabled as tricks_enabled
from realfake.verbosity import detail

HISTORY_FIELDS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
FUSED_ADAM_DEVICES = ("cpu", "cuda")  # where PyTorch has a fused Adam kernel
ONECYCLE_WARMUP = 0.2  # the share of onecycle's steps spent warming up (a prototype varies it by name)


class StepObserver(Protocol):
    """Told where each epoch's training steps begin and how many images each step trained on: how
    device.ThreadGovernor paces its windows, and how a benchmark times steps without reaching into the loop."""

    def restart(self) -> None: ...  # before an epoch's first batch is fetched

    def observe(self, images: int) -> None: ...  # after each training step (this process's images)


@dataclass
class EarlyStopping:
    """Stop after `patience` epochs without a lower validation loss; remember the best epoch."""

    patience: int
    best_loss: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0

    def step(self, val_loss: float, epoch: int) -> bool:
        """Record an epoch; True when this epoch is the new best."""
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    stopped_early: bool
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def state_to_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors through the one atomic writer: a full disk is a one-line WriteError, never half a file,
    and a killed write leaves a temporary the next write of the run removes. Non-finite weights are refused:
    they would call every image one class, silently."""
    check_finite(state, f"the weights for {path}")
    atomic_write_bytes(path, safetensors_bytes(state))


def check_finite(state: dict[str, torch.Tensor], what: str) -> None:
    """One line naming the first tensor holding NaN or inf: training diverged, and nothing of it may be saved."""
    if (bad := first_non_finite(state)) is not None:
        raise RealfakeError(f"training diverged: {what} hold NaN or inf values ({bad}); nothing was saved. "
                            f"Train again with a lower learning rate (--lr)")


def _bce_and_accuracy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    t_logits, t_labels = torch.from_numpy(logits), torch.from_numpy(labels.astype(np.float32))
    loss = nn.functional.binary_cross_entropy_with_logits(t_logits, t_labels).item()
    return loss, float(((logits > 0) == (labels == 1)).mean())


def write_history(run_dir: Path, history: list[dict[str, float]]) -> None:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=HISTORY_FIELDS)
    w.writeheader()
    w.writerows(history)
    RunDir(run_dir).write_text(RunDir.HISTORY, out.getvalue())


def _small_maps_while_training(train: Callable[..., FitResult]) -> Callable[..., FitResult]:
    """Run `train` with the model's convolutions on 2x2 and 1x1 maps as matrix products (realfake._kernels.small_maps):
    ResNet50's last stages at 32x32, whose convolution backward is slow; the layers are plain again after."""

    @functools.wraps(train)
    def wrapper(model: nn.Module, *args: Any, **kwargs: Any) -> FitResult:
        with small_map_kernels(model):
            return train(model, *args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class FitOptions:
    """How a training run proceeds, apart from what it trains: one object, so callers name what they change and
    a new option does not grow every signature between the command and the loop.

    `resume` continues from the run's checkpoint; `on_epoch_end(epoch)` is called after each epoch's checkpoint;
    `world` is the torchrun process group (realfake.distributed); `step_observer` is told of every step (a
    benchmark times the loop from outside); `tuning` opts this call in to process-wide tricks (malloc settings,
    the thread governor; realfake.tuning) or out (False), None following the process.
    """

    resume: bool = False
    on_epoch_end: Callable[[int], None] | None = None
    progress: bool = True
    world: World = SINGLE
    step_observer: StepObserver | None = None
    tuning: bool | None = None


@_small_maps_while_training
def fit(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    split: dict[str, np.ndarray],
    cfg: RunConfig,
    run_dir: Path,
    device: torch.device,
    options: FitOptions | None = None,
) -> FitResult:
    """Train `model` in place on split["train"], validating on split["val"]; ends on the best weights.

    Under torchrun (`world` from realfake.distributed) every rank runs this with the same arguments: the model
    is wrapped in DistributedDataParallel, each global batch of `cfg.batch_size` is shared out across the
    ranks, validation is shared out and gathered, the validation loss that early stopping and the scheduler
    act on is rank 0's, broadcast, and only rank 0 writes (history, TensorBoard, checkpoint).

    The random numbers it draws come from `cfg.seed` (device.seeded): the caller's random state is as it was after.
    """
    with seeded(cfg.seed, device):
        return _fit(model, images, labels, split, cfg, run_dir, device, options or FitOptions())


def _fit(
    model: nn.Module, images: np.ndarray, labels: np.ndarray, split: dict[str, np.ndarray], cfg: RunConfig,
    run_dir: Path, device: torch.device, opts: FitOptions,
) -> FitResult:
    world = opts.world
    check_global_batch(cfg.batch_size, world)
    with opted_in(opts.tuning):
        keep_freed_memory()  # each step's feature maps reuse the last step's pages (device.keep_freed_memory)
        may_govern = tricks_enabled()
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    model.to(device).to(memory_format=torch.channels_last)
    net = _distributed(model, cfg, device, world)
    train_rows, val_rows = split["train"], split["val"]
    my_val = val_rows[shard_rows(len(val_rows), world.rank, world.size)]
    choice = choose(cfg.data_placement, -(-len(train_rows) // world.size) + len(my_val), device, cfg.data_budget_mb)
    if world.is_main:
        detail(f"data placement: {choice.placement} ({choice.reason})")
    source = place(choice.placement, images, train_rows, device, world.rank, world.size)
    y_train = torch.from_numpy(labels[train_rows]).to(device)
    x_val = to_device_uint8(images[my_val], device) if choice.placement == "device" else None
    y_val = labels[val_rows]

    # The fused kernel updates every tensor in one pass where the per-tensor loop took a large share of a step
    # (docs/performance.md#figures-behind-the-code): the same update, one kernel.
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=device.type in FUSED_ADAM_DEVICES)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=math.ceil(len(y_train) / cfg.batch_size))
    per_step = cfg.schedule == "onecycle"  # stepped after every batch; plateau steps on each epoch's val loss
    early = EarlyStopping(cfg.patience)
    history: list[dict[str, float]] = []
    best_state = state_to_cpu(model)
    start_epoch = 0
    ckpt_dir = run_dir / RunDir.CHECKPOINT
    if opts.resume and (found := existing_dir(ckpt_dir)) is not None:
        ckpt = read_checkpoint(found)  # safetensors + JSON only: a run folder never gets to run code
        ckpt.restore(model, optimizer, scheduler, early, gen)
        early.patience = cfg.patience
        best_state, history, start_epoch = ckpt.best, list(ckpt.history), ckpt.epoch + 1

    robust = robust_augment(cfg)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype(device, cfg.precision) == torch.float16 else None
    writer = _tensorboard(run_dir) if world.is_main else None
    n_train = len(y_train)
    # On a CPU shared with other work, fewer threads where that trains faster (device.ThreadGovernor).
    governor = ThreadGovernor(log=detail) if may_govern and device.type == "cpu" and world.size == 1 else None
    if governor is not None and governor.enabled:
        record(THREAD_GOVERNOR)
    observers: list[StepObserver] = [o for o in (governor, opts.step_observer) if o is not None]
    t_start = time.perf_counter()
    stopped_early = early.should_stop

    def n_global(step: int) -> int:  # the images of global batch `step`, over every rank
        return min(cfg.batch_size, n_train - step * cfg.batch_size)

    def loss_of(logits: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        target = y if cfg.label_smoothing == 0 else y * (1 - cfg.label_smoothing) + cfg.label_smoothing / 2
        # The sum over this rank's images / the global batch (x ranks, which DDP's gradient mean undoes): the
        # gradient of the global batch's mean loss, however the batch is shared out.
        loss_sum = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum")
        return loss_sum * (world.size / n_global(step)), loss_sum

    try:
        for epoch in range(start_epoch, cfg.epochs):
            if early.should_stop:
                stopped_early = True
                break
            t0 = time.perf_counter()
            net.train()
            bar = tqdm(
                total=n_train, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="img",
                disable=not (opts.progress and world.is_main), file=sys.stderr, leave=True,
            )
            batches = train_batches(source, y_train, cfg.batch_size, gen, robust=robust, rank=world.rank,
                                    size=world.size)
            for o in observers:
                o.restart()

            def after_step(step: int, n_mine: int, sums: torch.Tensor, bar: tqdm = bar) -> None:
                if per_step:
                    scheduler.step()
                bar.update(n_global(step))
                for o in observers:
                    o.observe(n_mine)
                if step % 10 == 0 and bar.disable is False:  # reading the loss syncs the device: not every step
                    s_loss, s_correct, s_seen = sums.tolist()
                    bar.set_postfix(loss=f"{s_loss / s_seen:.4f}", acc=f"{s_correct / s_seen:.3f}")

            sums = train_epoch(net, batches, optimizer, loss_of, device=device, precision=cfg.precision,
                               scaler=scaler, after_step=after_step)
            loss_total, correct_total, seen = all_sum(sums.tolist(), world)
            val_logits = _validation_logits(model, images, my_val, x_val, device, cfg)
            val_logits = gather_interleaved(val_logits, len(val_rows), world)
            val_loss, val_acc = broadcast_floats(list(_bce_and_accuracy(val_logits, y_val)), world)
            row = {
                "epoch": epoch + 1,
                "train_loss": round(loss_total / max(seen, 1), 6),
                "train_accuracy": round(correct_total / max(seen, 1), 6),
                "val_loss": round(val_loss, 6),
                "val_accuracy": round(val_acc, 6),
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": round(time.perf_counter() - t0, 3),
            }
            bar.set_postfix(loss=f"{row['train_loss']:.4f}", acc=f"{row['train_accuracy']:.3f}",
                            val_loss=f"{val_loss:.4f}", val_acc=f"{val_acc:.3f}")
            bar.close()
            if not (math.isfinite(row["train_loss"]) and math.isfinite(val_loss)):  # before anything is written
                raise RealfakeError(
                    f"training diverged in epoch {epoch + 1} (train loss {row['train_loss']}, validation loss "
                    f"{val_loss}): this epoch was not saved. Train again with a lower learning rate (--lr, it was "
                    f"{cfg.lr:g})")
            check_finite(model.state_dict(), f"the weights after epoch {epoch + 1}")
            if not per_step:
                scheduler.step(val_loss)
            if early.step(val_loss, epoch + 1):
                best_state = state_to_cpu(model)
            history.append(row)
            if writer is not None:
                for k in HISTORY_FIELDS[1:]:
                    writer.add_scalar(k, row[k], epoch + 1)
                writer.flush()
            if world.is_main:  # one writer: the other ranks hold the same state
                try:
                    write_history(run_dir, history)
                except WriteError as e:  # the checkpoint of the epoch before is still there (or there is none yet)
                    raise e.then(_continue(run_dir, ckpt_dir)) from None
                write_checkpoint(ckpt_dir, model, best_state, optimizer, scheduler, early, gen, epoch, history)
            if opts.on_epoch_end is not None:
                opts.on_epoch_end(epoch + 1)
            if early.should_stop:
                stopped_early = epoch + 1 < cfg.epochs
                break
    finally:
        if governor is not None:  # all threads again, also after an interrupt or an error
            governor.close()
    if writer is not None:
        writer.close()
    source.close()
    model.load_state_dict(best_state)
    info: dict[str, Any] = {"data_placement": choice.placement, "data_placement_reason": choice.reason}
    if governor is not None and governor.switches:
        info["training_threads"] = governor.switches
    return FitResult(history, early.best_epoch, stopped_early, time.perf_counter() - t_start, info)


def train_epoch(
    net: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    loss_of: Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    after_step: Callable[[int, int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """One pass of gradient steps over `batches`, the one training loop `fit` and `adapt`'s head fine-tuning share.

    `loss_of(fp32 logits, labels, step)` gives the loss to descend and its sum over the batch's images;
    `after_step(step, images, sums)` follows each step. Returns this process's [loss sum, correct, images] on the
    device: summed there, so no step waits for the device to report.
    """
    sums = torch.zeros(3, device=device)
    for step, (x, y) in enumerate(batches):
        with autocast(device, precision):
            logits = net(x)
        loss, loss_sum = loss_of(logits.float(), y, step)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        sums[0] += loss_sum.detach()
        sums[1] += ((logits.detach() > 0) == (y > 0.5)).sum()
        sums[2] += len(y)
        if after_step is not None:
            after_step(step, len(y), sums)
    return sums


def check_sync_batchnorm(cfg: RunConfig, device: torch.device) -> None:
    if cfg.sync_batchnorm and device.type != "cuda":
        raise RealfakeError("--sync-batchnorm needs CUDA GPUs (PyTorch's SyncBatchNorm does not run on the CPU)")


def _distributed(model: nn.Module, cfg: RunConfig, device: torch.device, world: World) -> nn.Module:
    """What the training steps call: the model itself, or under torchrun the model in DistributedDataParallel
    (its BatchNorm layers made SyncBatchNorm first with `sync_batchnorm`, which PyTorch runs on GPUs only)."""
    check_sync_batchnorm(cfg, device)
    if not world.distributed:
        return model
    if cfg.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place: the same parameters and buffers
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _validation_logits(
    model: nn.Module, images: np.ndarray, rows: np.ndarray, resident: torch.Tensor | None,
    device: torch.device, cfg: RunConfig,
) -> np.ndarray:
    """Logits for this rank's validation rows: from the device-resident copy, or streamed from the host array in
    chunks (so a streamed run never holds the validation split either)."""
    if resident is not None:
        return predict_logits(model, resident, device, cfg.eval_batch_size, tta=cfg.tta, precision=cfg.precision)
    chunk = max(cfg.eval_batch_size, 8192)
    parts = [
        predict_logits(model, np.asarray(images[rows[a : a + chunk]]), device, cfg.eval_batch_size,
                       tta=cfg.tta, precision=cfg.precision)
        for a in range(0, len(rows), chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def _continue(run_dir: Path, ckpt_dir: Path) -> str:
    """The way on after a failed write inside the loop: resume if a checkpoint exists, else start again."""
    if existing_dir(ckpt_dir) is not None:
        return f"continue with: realfake train --resume {run_dir}"
    return "train again with a new --out"


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig, steps_per_epoch: int) -> Any:
    """The learning-rate schedule `cfg.schedule` names.

    plateau (the notebook's): x lr_factor after lr_patience epochs without val-loss progress.
    onecycle (fast models' recipe, after airbench): per step, linear warm-up from 0.1x to 1x over the first
    20% of the run, then linear decay to 0 at the last step of `cfg.epochs`. Its state is the step count, so
    a resumed run continues on the same curve (stretched if --epochs changed).
    """
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience, min_lr=cfg.min_lr
        )
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = max(1, round(ONECYCLE_WARMUP * total))

    def factor(step: int) -> float:
        if step < warm:
            return 0.1 + 0.9 * step / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def robust_augment(cfg: RunConfig) -> RobustAugment | None:
    """The JPEG + blur training augmentation when the config asks for it (`augment: robust`), with the
    artefact simulation on top for `augment: simulate`."""
    if cfg.augment not in ("robust", "simulate"):
        return None
    sim = ArtefactSimulation(cfg.aug_sim_share) if cfg.augment == "simulate" else None
    return RobustAugment(
        cfg.aug_jpeg_p, tuple(cfg.aug_jpeg_quality), cfg.aug_blur_p, tuple(cfg.aug_blur_sigma), simulation=sim
    )


def _tensorboard(run_dir: Path) -> Any:
    """TensorBoard event files in run_dir/tb; training goes on without them if the writer cannot start."""
    try:
        # tensorboard imports all of TensorFlow (seconds, gigabytes) when it is installed, unless this marker
        # module exists; event files need only its stub.
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=str(run_dir / RunDir.TENSORBOARD))
    except Exception as e:  # noqa: BLE001 - optional output, never worth failing a run for
        print(f"warning: no TensorBoard logs ({e.__class__.__name__}: {e})", file=sys.stderr)
        return None
