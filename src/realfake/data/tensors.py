"""uint8 images to model tensors: the two steps prediction and training share, below both, so that predicting
never imports training's batch module (augmentation, placement)."""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

from collections.abc import Iterator

import numpy as np
import torch


def to_device_uint8(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 array to an (N, 3, H, W) uint8 tensor on `device` (channels_last memory).

    A read-only array (the cache's memory map) is copied first: a CPU tensor would otherwise share its pages,
    and torch cannot promise not to write to them.
    """
    arr = np.ascontiguousarray(images)
    if not arr.flags.writeable:
        arr = arr.copy()
    t = torch.from_numpy(arr).to(device)
    return t.permute(0, 3, 1, 2)  # a view: NHWC memory read as NCHW is exactly channels_last


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] to float [0,1], the scaling the seed notebook used."""
    return batch.float().div_(255.0).contiguous(memory_format=torch.channels_last)


def eval_batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive float batches of uint8 images, in order: what every prediction pass feeds the model."""
    for start in range(0, images.shape[0], batch_size):
        yield to_float(images[start : start + batch_size])
