"""Logits from a PyTorch model for uint8 images: the inference path, shared by training's validation, the
Detector, evaluation and the ONNX graph, and importing nothing from the training loop.

Test-time augmentation is defined once here (`tta_logits`); the set of modes is `contract.TTA_MODES`.
"""

from __future__ import annotations

__side__ = "predicting"  # see tests/test_layers.py

import threading
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from realfake.contract import check_tta
from realfake.data.tensors import eval_batches, to_device_uint8
from realfake.device import Precision, autocast, keep_freed_memory, resolve_precision
from realfake.models.fused import for_prediction


def tta_logits(model: nn.Module, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """The model's logits for float images, averaged with the mirror image's when tta="flip".

    The one definition of test-time augmentation: evaluation, prediction and the ONNX graph all call it.
    """
    logits = model(x).float()
    if tta == "flip":
        logits = (logits + model(x.flip(3)).float()) / 2
    return logits


def forward_batch(model: nn.Module, device: torch.device, batch_size: int) -> int:
    """Images per forward pass: `batch_size`, or on a CPU the model's own `cpu_forward_batch` when smaller (a
    model whose feature maps fall out of cache at large batches runs faster in pieces). An image's logit does
    not depend on the batch it came in, so the pieces change the speed, not the answers."""
    own = getattr(model, "cpu_forward_batch", None) if device.type == "cpu" else None
    return min(batch_size, own) if isinstance(own, int) and own > 0 else batch_size


@torch.inference_mode()
def predict_logits(
    model: nn.Module, images: np.ndarray | torch.Tensor, device: torch.device, batch_size: int = 1024,
    tta: str = "none", precision: str | Precision = "auto",
) -> np.ndarray:
    """Logits (fp32) for (N, 32, 32, 3) uint8 images, in large batches, in eval mode.

    tta="flip" averages the logits of each image and its mirror image (training saw both orientations).
    `precision` (auto | fp32 | bf16) is what the model computes in; see realfake.device.
    """
    check_tta(tta)
    if not isinstance(precision, Precision):
        precision = resolve_precision(device, precision)  # once, not per batch
    model.eval()
    batch_size = forward_batch(model, device, batch_size)
    if isinstance(images, np.ndarray):
        images = to_device_uint8(images, device)
    out = []
    for x in eval_batches(images, batch_size):
        x = x.to(device)
        with autocast(device, precision):
            out.append(tta_logits(model, x, tta).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


class TorchBackend:
    """A PyTorch model on a device, with the run's test-time augmentation: `logits(images)`.

    It also hands its model to Grad-CAM (`realfake.explain`); model calls take turns through `lock`, because
    Grad-CAM hooks a layer for the length of a call and a prediction running meanwhile in another thread (a
    web server) would trip them.
    """

    name = "torch"

    def __init__(self, model: nn.Module, device: torch.device, tta: str = "none", precision: str = "auto") -> None:
        keep_freed_memory()  # each batch's feature maps reuse the last batch's pages (device.keep_freed_memory)
        self.model = model.to(device).eval()
        self.device = device
        self.tta = check_tta(tta)
        self.precision: Precision = resolve_precision(device, precision)  # resolved once: a bad value fails here
        self.lock = threading.RLock()
        # BatchNorm folded, activations fused, weights in the precision's dtype (models.fused): the same function of
        # the image, fewer passes; calibration and the test split's figures are computed through this same copy.
        self._predicting, self.fusion = for_prediction(self.model, self.precision.dtype)

    def logits(self, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Raw (uncalibrated) logits, float64, for checked (N, 32, 32, 3) uint8 images."""
        with self.lock:
            per_pass = forward_batch(self.model, self.device, batch_size)  # the fused copy does not carry it
            z = predict_logits(self._predicting, images, self.device, per_pass, tta=self.tta, precision=self.precision)
        return np.asarray(z, dtype=np.float64)


def logits_by_chunk(
    logits_of: Callable[[np.ndarray], np.ndarray], images: np.ndarray, rows: np.ndarray, batch_size: int = 1024,
) -> np.ndarray:
    """`logits_of(images[rows])`, read 16 batches of rows at a time: a split of a memory-mapped cache is never
    copied whole into memory (a large set's test split can be gigabytes), and each chunk is
    whole batches, so the model sees the batches it would see in one call and the logits are the same."""
    chunk = 16 * batch_size
    if len(rows) <= chunk:
        return logits_of(np.asarray(images[rows]))
    return np.concatenate([logits_of(np.asarray(images[rows[i : i + chunk]])) for i in range(0, len(rows), chunk)])
