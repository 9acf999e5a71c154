"""The facts every layer shares, in one leaf module: class names, image size, test-time augmentation modes,
the uint8 NHWC image check and the version.

Everything else in realfake imports these from here and nowhere else, so a prediction, a metric, an ONNX
file and a report can never disagree on which label is positive or what shape an image has.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

from typing import Any

import numpy as np

from realfake.errors import RealfakeError

__version__ = "0.1.0"

CLASS_NAMES: tuple[str, str] = ("REAL", "FAKE")  # label 0 = REAL, label 1 = FAKE (the positive class)
IMAGE_SIZE = 32  # CIFAKE's size; every image is normalised to it
# Test-time augmentation: "flip" averages the logits of an image and its mirror image (training saw both).
TTA_MODES: tuple[str, ...] = ("none", "flip")
# Compute precision asked for: auto = bf16 where the hardware has it natively (see realfake.device), else fp32.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")


# How a run splits its data: the notebook's stratified 70/20/10, CIFAKE's own test/ folder, or a source (a
# generator, say) held out of training entirely and judged only in the test split.
PROTOCOLS: tuple[str, ...] = ("seed", "official")
HOLDOUT = "holdout:"


def check_protocol(protocol: str) -> str:
    """seed, official or holdout:SOURCE; anything else is a one-line error."""
    if protocol in PROTOCOLS or (protocol.startswith(HOLDOUT) and protocol[len(HOLDOUT):].strip()):
        return protocol
    raise RealfakeError(f"protocol must be seed, official or holdout:SOURCE; got {protocol!r}")


def check_tta(tta: str) -> str:
    """A known TTA mode, or a one-line error naming the known ones."""
    if tta not in TTA_MODES:
        raise RealfakeError(f"test-time augmentation must be one of {', '.join(TTA_MODES)}; got {tta!r}")
    return tta


def check_precision(precision: str) -> str:
    """auto, fp32 or bf16; anything else is a one-line error naming them."""
    if precision not in PRECISIONS:
        raise RealfakeError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


def check_images(images: Any) -> np.ndarray:
    """(N, 32, 32, 3) uint8, the form `realfake.data.images` produces; anything else is a user error."""
    a = np.asarray(images)
    if a.ndim != 4 or a.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) or a.dtype != np.uint8:
        raise RealfakeError(
            f"want (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3) uint8 images (see realfake.data.images.from_any); "
            f"got {a.dtype} of shape {a.shape}"
        )
    return a
