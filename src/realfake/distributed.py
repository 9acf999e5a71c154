"""Training on several processes under `torchrun`: who this process is, its process group, and the handful of
collective steps the training loop needs.

realfake has no launcher of its own. `torchrun --nproc-per-node N -m realfake train ...` (or the same under
Slurm / Kubeflow with `--nnodes` and `--rdzv-*`) starts N copies of the ordinary `train` command; torchrun
sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE, supervises the copies (one failing ends the others)
and restarts nothing unless asked. Everything here is a no-op for a single process, so the loop reads the
same either way.

The backend is NCCL on CUDA and gloo on CPU, chosen from the device. Decisions that must agree across ranks
(early stopping, the plateau scheduler, the run folder's name) are made on rank 0 and broadcast as tensors:
no pickle travels between processes.
"""

from __future__ import annotations

__side__ = "training"  # see tests/test_layers.py

import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from realfake import tuning
from realfake.errors import RealfakeError

# How long a rank waits for the others at a collective (NCCL and gloo): generous, since rank 0 may be building
# the data cache while the others wait, and torchrun ends every rank anyway when one of them fails.
TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 when not under torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder, logs and shows progress."""
        return self.rank == 0


SINGLE = World()


def world_from_env() -> World:
    """The World torchrun describes in the environment; SINGLE when its variables are absent."""
    env = os.environ
    if "WORLD_SIZE" not in env:
        return SINGLE
    try:
        w = World(
            rank=int(env.get("RANK", "0")),
            size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            local_size=int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])),
        )
    except ValueError:
        raise RealfakeError(
            "RANK, WORLD_SIZE, LOCAL_RANK must be whole numbers (they are set by torchrun; launch with "
            "`torchrun --nproc-per-node N -m realfake train ...`)"
        ) from None
    if w.size < 1 or not 0 <= w.rank < w.size or not 0 <= w.local_rank < max(w.local_size, 1):
        raise RealfakeError(f"inconsistent torchrun environment: RANK {w.rank}, WORLD_SIZE {w.size}, "
                            f"LOCAL_RANK {w.local_rank}, LOCAL_WORLD_SIZE {w.local_size}")
    return w


def start(world: World, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo otherwise) and return this rank's device.

    Each rank gets one GPU (cuda:LOCAL_RANK); on CPU the cores are shared out (torch threads = cores / ranks on
    this machine) where process-wide tricks are enabled (realfake.tuning), since N processes each running every
    core's worth of threads slow each other several-fold.
    """
    if not world.distributed:
        return device
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise RealfakeError(f"LOCAL_RANK {world.local_rank} but only {torch.cuda.device_count()} GPU(s) here: "
                                f"use --nproc-per-node {torch.cuda.device_count()} or fewer")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
        if tuning.enabled():  # the process is torchrun's rank of `realfake train`, which opts in (realfake.tuning)
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(world.local_size, 1)))
            tuning.record(tuning.THREADS)
    else:
        raise RealfakeError(f"training on several processes needs CUDA or the CPU, not {device.type}")
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=TIMEOUT)
    return device


def finish(world: World) -> None:
    """Leave the process group (so torchrun sees a clean exit and NCCL frees its resources)."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def _comm_device() -> torch.device:
    """Where collective tensors live: NCCL only moves CUDA tensors, gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_floats(values: list[float], world: World) -> list[float]:
    """Rank 0's numbers, on every rank (float64, so a validation loss arrives bit for bit)."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.broadcast(t, src=0)
    return t.cpu().tolist()


def broadcast_text(text: str, world: World, max_bytes: int = 4096) -> str:
    """Rank 0's string on every rank (the run folder's path, which rank 0 alone may have named)."""
    if not world.distributed:
        return text
    raw = text.encode("utf-8")
    if len(raw) > max_bytes:
        raise RealfakeError(f"path too long for the training processes to share ({len(raw)} bytes > {max_bytes})")
    buf = torch.zeros(max_bytes, dtype=torch.uint8, device=_comm_device())
    if world.is_main and raw:
        buf[: len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(buf.device)
    n = torch.tensor([len(raw)], dtype=torch.int64, device=buf.device)
    dist.broadcast(n, src=0)
    dist.broadcast(buf, src=0)
    return bytes(buf[: int(n.item())].cpu().tolist()).decode("utf-8")


def all_sum(values: list[float], world: World) -> list[float]:
    """Sums over ranks (the epoch's training loss and accuracy counts, so history shows the whole batch)."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def gather_interleaved(local: np.ndarray, n_total: int, world: World) -> np.ndarray:
    """Every rank's share of a split back in the split's order, on every rank.

    Rank r holds the rows r, r + W, r + 2W, ... (`shard_rows`); shares differ by at most one row, so they are
    padded to one length for the collective and the padding dropped after.
    """
    if not world.distributed:
        return local
    per = -(-n_total // world.size)
    pad = torch.zeros(per, dtype=torch.float64, device=_comm_device())
    pad[: len(local)] = torch.from_numpy(np.asarray(local, dtype=np.float64)).to(pad.device)
    parts = [torch.empty_like(pad) for _ in range(world.size)]
    dist.all_gather(parts, pad)
    out = np.empty(n_total, dtype=np.float64)
    for r, part in enumerate(parts):
        rows = shard_rows(n_total, r, world.size)
        out[rows] = part[: len(rows)].cpu().numpy()
    return out


def check_global_batch(batch_size: int, world: World) -> None:
    """--batch-size is the global batch: it must share out evenly, so every rank's rows are the one-process
    batch's every size-th row (and a run means the same on 1 or N processes)."""
    if batch_size % world.size:
        raise RealfakeError(f"--batch-size {batch_size} is the global batch and must divide evenly among the "
                            f"{world.size} training processes")


def shard_rows(n: int, rank: int, size: int) -> np.ndarray:
    """The rows of an n-row split that rank `rank` of `size` evaluates: every size-th one, from its rank."""
    return np.arange(rank, n, size)
