"""Batches straight from a device-resident uint8 tensor; augmentation is whole-batch tensor ops.

Following airbench: no DataLoader workers, no per-sample Python. The data set is small (120k x 3 KB),
so it lives on the training device, and each step is one gather, one cast and two masked flips.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def to_device_uint8(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 array to an (N, 3, H, W) uint8 tensor on `device` (channels_last memory)."""
    t = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return t.permute(0, 3, 1, 2)  # a view: NHWC memory read as NCHW is exactly channels_last


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] to float [0,1], the scaling the seed notebook used."""
    return batch.float().div_(255.0).contiguous(memory_format=torch.channels_last)


def random_flips(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image horizontally with p=0.5 and, independently, vertically with p=0.5."""
    n = x.shape[0]
    coins = torch.rand(2, n, generator=generator, device=generator.device) < 0.5
    coins = coins.to(x.device).view(2, n, 1, 1, 1)
    x = torch.where(coins[0], x.flip(3), x)
    return torch.where(coins[1], x.flip(2), x)


def train_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    augment: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled epoch of (float images, float labels); the last, smaller batch is kept (unless of one)."""
    order = torch.randperm(len(labels), generator=generator, device=generator.device).to(images.device)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        if len(idx) < 2:  # BatchNorm cannot train on a batch of one; that image is seen next epoch
            break
        x = to_float(images[idx])
        if augment:
            x = random_flips(x, generator)
        yield x, labels[idx].float()


def eval_batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, images.shape[0], batch_size):
        yield to_float(images[start : start + batch_size])
