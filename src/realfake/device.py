"""Pick the compute device, what the CPU can do, and the precision to compute in: the one place that decides.

Precision: `auto` uses bf16 autocast where the hardware does bf16 natively and fp32 elsewhere. On CPU
"natively" means AMX or AVX-512 BF16: on an Intel Xeon with AMX the `fast` model's forward ran 2.5x faster
under bf16 autocast than in fp32 (issue 11), while a CPU without them (AVX2 only, e.g. this project's AMD
EPYC) converts to and from bf16 around fp32 arithmetic and gets slower. On CUDA it is bf16 where the GPU has
it, else fp16 with loss scaling (as before). `bf16` forces bf16 autocast (on any CPU: slow without native
support, but it runs, so results can be compared anywhere); `fp32` turns autocast off. Logits and the loss
are always computed in fp32 (`.float()` at the model's output). ONNX export and the ONNX backend are fp32.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from realfake.contract import check_precision
from realfake.errors import RealfakeError

# The CPU features that decide how fast realfake's kernels can be, in /proc/cpuinfo's spelling:
# avx2 (the baseline oneDNN expects), avx512f, the bf16 units (avx512_bf16, amx_bf16 on amx_tile) and the int8
# dot products (avx512_vnni, avx_vnni, amx_int8) that int8 inference uses.
ISA_FLAGS: tuple[str, ...] = (
    "avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "avx512_vnni", "avx_vnni",
)
# torch.cpu.get_capabilities() spells one of them differently.
_TORCH_CAPABILITY_NAMES = {"avx512f": "avx512_f"}


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


# ---------------------------------------------------------------- what the CPU can do


def _proc_cpuinfo() -> tuple[str | None, set[str] | None]:
    """Model name and flags from Linux's /proc/cpuinfo (the kernel's view: a flag there is also enabled by the
    OS, which matters for AMX); (None, None) elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None, None
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip() or None
        elif key in ("flags", "Features") and flags is None:  # Features: Linux on ARM
            flags = set(value.split())
        if model is not None and flags is not None:
            break
    return model, flags


def _torch_capabilities() -> dict[str, Any] | None:
    """torch.cpu.get_capabilities() (cpuinfo; any OS) where this torch has it."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is None:
        return None
    try:
        caps = get()
    except Exception:  # noqa: BLE001 - a private-ish API: any failure means "not known this way"
        return None
    return caps if isinstance(caps, dict) else None


def _torch_private_flags() -> dict[str, bool]:
    """The older torch.cpu._is_*_supported probes, for a torch without get_capabilities."""
    probes = {
        "avx2": "_is_avx2_supported", "avx512f": "_is_avx512_supported", "avx512_bf16": "_is_avx512_bf16_supported",
        "amx_tile": "_is_amx_tile_supported", "avx512_vnni": "_is_vnni_supported",
    }
    out = {}
    for flag, name in probes.items():
        fn = getattr(torch.cpu, name, None)
        with contextlib.suppress(Exception):
            if fn is not None:
                out[flag] = bool(fn())
    return out


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """The CPU's model, its ISA_FLAGS (True/False; None where no source could tell), where they were read,
    ATen's dispatch level, logical cores, and whether it has native bf16.

    /proc/cpuinfo first (Linux), then torch.cpu.get_capabilities(), then torch's older private probes.
    """
    model, flags = _proc_cpuinfo()
    caps = _torch_capabilities()
    isa: dict[str, bool | None]
    if flags is not None:
        source = "/proc/cpuinfo"
        isa = {f: f in flags for f in ISA_FLAGS}
    elif caps is not None:
        source = "torch.cpu.get_capabilities"
        isa = {f: bool(caps[k]) if (k := _TORCH_CAPABILITY_NAMES.get(f, f)) in caps else None for f in ISA_FLAGS}
    else:
        source = "torch.cpu probes"
        probed = _torch_private_flags()
        isa = {f: probed.get(f) for f in ISA_FLAGS}
    if model is None and caps is not None and caps.get("cpu_name"):
        model = str(caps["cpu_name"])
    capability = None
    with contextlib.suppress(Exception):
        capability = str(torch.backends.cpu.get_cpu_capability())
    info: dict[str, Any] = {
        "model": model or platform.processor() or platform.machine() or "unknown CPU",
        "isa": isa,
        "isa_source": source,
        "torch_cpu_capability": capability,
        "logical_cores": os.cpu_count(),
    }
    info["native_bf16"] = bool(isa.get("amx_bf16") or isa.get("avx512_bf16"))
    return info


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX-512 BF16), so bf16 autocast is a speed-up."""
    return bool(cpu_info()["native_bf16"])


def _bf16_units(info: dict[str, Any]) -> str:
    units = [f for f in ("amx_bf16", "avx512_bf16") if info["isa"].get(f)]
    return ", ".join(units) or "no AMX or AVX-512 BF16"


# ---------------------------------------------------------------- precision


@dataclass(frozen=True)
class Precision:
    """What a model computes in (`name`: fp32 | bf16 | fp16, the autocast dtype) and why: recorded in run.json
    and the bench JSON so that a figure can be traced to the arithmetic that made it."""

    name: str
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype; None means no autocast (fp32)."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def to_info(self) -> dict[str, str]:
        return {"precision": self.name, "precision_reason": self.reason}


def resolve_precision(device: torch.device, precision: str = "auto") -> Precision:
    """The precision `precision` (auto | fp32 | bf16) means on `device`; see the module docstring."""
    check_precision(precision)
    if precision == "fp32":
        return Precision("fp32", "asked for fp32")
    if device.type == "cpu":
        info = cpu_info()
        where = f"this CPU ({info['model']}: {_bf16_units(info)})"
        native = native_bf16_cpu()
        if precision == "bf16":
            return Precision("bf16", f"asked for bf16; native on {where}" if native else
                             f"asked for bf16; emulated on {where}, slower than fp32")
        return Precision("bf16", f"auto: native bf16 on {where}") if native else \
            Precision("fp32", f"auto: no native bf16 on {where}")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if precision == "bf16":
            if not torch.cuda.is_bf16_supported():
                raise RealfakeError(f"--precision bf16: the GPU {name} cannot compute in bf16; use auto or fp32")
            return Precision("bf16", f"asked for bf16 on {name}")
        if _cuda_native_bf16():
            return Precision("bf16", f"auto: {name} has bf16")
        return Precision("fp16", f"auto: {name} has no native bf16: fp16 with loss scaling")
    if precision == "bf16":
        raise RealfakeError(f"--precision bf16 is not supported on {device.type}; use auto or fp32")
    return Precision("fp32", f"auto: fp32 on {device.type}")


def _cuda_native_bf16() -> bool:
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # an older torch without the argument: it reported native support only
        return bool(torch.cuda.is_bf16_supported())


def amp_dtype(device: torch.device, precision: str | Precision = "auto") -> torch.dtype | None:
    """The autocast dtype for `precision` (a name, or one already resolved) on `device`; None for plain fp32."""
    if isinstance(precision, Precision):
        return precision.dtype
    return resolve_precision(device, precision).dtype


@contextlib.contextmanager
def autocast(device: torch.device, precision: str | Precision = "auto") -> Iterator[None]:
    """Run the block under the autocast `precision` resolves to on `device` (nothing for fp32)."""
    dtype = amp_dtype(device, precision)
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield
