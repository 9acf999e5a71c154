"""Pick the compute device and the matching mixed-precision mode, in one place."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from realfake.errors import RealfakeError


def select_device(spec: str = "auto") -> torch.device:
    """auto = CUDA, then Apple MPS, then CPU. An explicit device that is missing is an error, not a fallback."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise RealfakeError(f"--device {spec} asked for, but CUDA is not available here; use --device auto")
    if spec == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RealfakeError("--device mps asked for, but MPS is not available here; use --device auto")
    return torch.device(spec)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU has it, else fp16, on CUDA only; CPU runs stay in fp32 (exact, repeatable)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    dtype = amp_dtype(device)
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield
