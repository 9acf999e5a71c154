"""Pick the compute device, what the CPU can do, and the precision to compute in: the one place that decides.

Precision: `auto` uses bf16 autocast where the hardware does bf16 natively and fp32 elsewhere. On CPU
"natively" means AMX or AVX-512 BF16, where bf16 autocast is much faster than fp32 (docs/guide/models.md#precision),
while a CPU without them (AVX2 only, e.g. an AMD EPYC) converts to and from bf16 around fp32 arithmetic and gets slower.
On CUDA it is bf16 where the GPU has it, else fp16 with loss scaling (as before). `bf16` forces bf16 autocast (on any
CPU: slow without native support, but it runs, so results can be compared anywhere); `fp32` turns autocast off. Logits
and the loss are always computed in fp32 (`.float()` at the model's output). ONNX export and the ONNX backend are fp32.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import contextlib
import ctypes
import functools
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from realfake import tuning
from realfake._kernels import cpu_caps
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


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch's random generators for the CPU and `device` seeded with `seed` inside, and put back as the caller had
    them after: a library call repeats its seed without reseeding (or using up) its caller's random numbers.

    Inside, the numbers are those of `torch.manual_seed(seed)` on the generators a run draws from (the CPU's,
    `device`'s); the generators of devices the run does not use are not touched at all.
    """
    accelerator = device.type not in ("cpu", "meta")
    with torch.random.fork_rng(devices=[device] if accelerator else [],
                               device_type=device.type if accelerator else "cpu"):
        torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):  # its index, or the current device where it names none
                torch.cuda.manual_seed(seed)
        elif accelerator:
            torch.get_device_module(device.type).manual_seed(seed)
        yield


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


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """The CPU's model, its ISA_FLAGS (True/False; None where no source could tell), where they were read,
    ATen's dispatch level, logical cores, and whether it has native bf16.

    /proc/cpuinfo first (Linux), then torch.cpu.get_capabilities(), then torch's older private probes
    (realfake._kernels.cpu_caps, where private APIs live).
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
        probed = cpu_caps.probed_flags()
        source = "torch.cpu probes" if probed else "none"
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


# ---------------------------------------------------------------- memory

# glibc's malloc parameters (malloc.h) and the values keep_freed_memory sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for the threshold it adjusts by itself (64-bit)
KEEP_TRIM_THRESHOLD = 256 << 20
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def keep_freed_memory() -> str:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel, where the caller
    opted in to process-wide tricks (realfake.tuning); says what it did (see `_keep_freed_memory` for why)."""
    if not tuning.enabled():
        return "left: process-wide tuning is off (realfake.tuning)"
    said = _keep_freed_memory()
    if not said.startswith("left"):
        tuning.record(tuning.MALLOC)
    return said


@functools.lru_cache(maxsize=1)
def _keep_freed_memory() -> str:
    """Set glibc's malloc to keep freed memory for reuse (once per process); says what it did.

    Why: every step of training, and every batch of prediction, allocates and frees the same few megabytes of
    feature maps. By default glibc returns a freed top of heap over twice its largest recent mmap'd block
    (a few MB here) to the kernel, and maps blocks over its threshold afresh, so each step's buffers came back
    as new pages, zeroed by the kernel on first touch: thousands of page faults a training step, and a tenth of
    the kernel CPU with this setting (docs/performance.md, Speed: "Freed memory kept"). Blocks under KEEP_MMAP_THRESHOLD
    now come from the heap, and up to KEEP_TRIM_THRESHOLD of freed heap stays in the process, as PyTorch's GPU caching
    allocator keeps its blocks; larger blocks (a data set's array) are still mapped and returned.

    Left alone where it cannot apply or the user chose: not glibc, another allocator preloaded, or glibc's
    malloc tunables set in the environment. Process-wide and once per process; realfake's training (fit) and
    PyTorch prediction (infer.TorchBackend) call it through `keep_freed_memory`, which asks realfake.tuning.
    """
    libc_name, _ = platform.libc_ver()
    if libc_name != "glibc":
        return f"left: the C library is {libc_name or 'not glibc'}"
    preload = os.environ.get("LD_PRELOAD", "")
    if any(a in preload for a in _OTHER_ALLOCATORS):
        return f"left: another allocator is preloaded ({preload})"
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "") or any(k in os.environ for k in _MALLOC_ENV):
        return "left: glibc's malloc is tuned in the environment"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "left: mallopt not found"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, KEEP_MMAP_THRESHOLD) != 1 or mallopt(_M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD) != 1:
        return "left: mallopt refused"
    return (f"glibc malloc keeps freed memory (mmap threshold {KEEP_MMAP_THRESHOLD >> 20} MiB, "
            f"trim threshold {KEEP_TRIM_THRESHOLD >> 20} MiB)")


# ---------------------------------------------------------------- sharing the CPU


def _cpu_seconds() -> tuple[float, float] | None:
    """(every process's busy CPU-seconds, this process's), or None where /proc/stat cannot be read (not Linux)."""
    try:
        import resource  # Unix only

        with open("/proc/stat") as f:
            fields = f.readline().split()
    except (OSError, ImportError):
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
    tick = os.sysconf("SC_CLK_TCK")
    me = resource.getrusage(resource.RUSAGE_SELF)
    return (user + nice + system + irq + softirq) / tick, me.ru_utime + me.ru_stime


class ThreadGovernor:
    """Train on all the cores alone, and on fewer while other work shares them, where fewer is faster (probed).

    Why: alone, `fast`'s training loop runs faster with PyTorch's OpenMP threads spinning between operations
    (libgomp's default) than sleeping (OMP_WAIT_POLICY=PASSIVE); beside another job, all threads can collapse
    under either policy (each of a step's hundreds of operators waits for every thread to hold a core) while one
    thread holds up (docs/performance.md#on-a-busy-machine).
    Which count is faster beside other work depends on the machine, so it is measured: every WINDOW_S seconds
    of training the governor reads how much CPU other processes used (/proc/stat less this process); when they
    used BUSY cores or more, it tries fewer threads for a window and keeps whichever count trained faster, tries
    again every REPROBE windows, and returns to all threads when the others stop. Off where /proc/stat is
    unreadable, with one thread, or when the user fixed the count (OMP_NUM_THREADS). In a container whose
    /proc/stat counts the host's other tenants it probes now and then: one window in REPROBE + 1, kept only
    if faster. A run whose thread count changed is not repeatable bit for bit (reductions split differently):
    run.json lists the switches, and OMP_NUM_THREADS turns the governor off for a run that must be. Changing the
    thread count is process-wide, so `fit` builds one only where realfake.tuning allows it (the command does).
    """

    WINDOW_S = 3.0
    BUSY = 0.5
    REPROBE = 15

    def __init__(
        self,
        threads: int | None = None,
        cpu_seconds: Callable[[], tuple[float, float] | None] = _cpu_seconds,
        clock: Callable[[], float] = time.perf_counter,
        set_threads: Callable[[int], None] = torch.set_num_threads,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.full = threads or torch.get_num_threads()
        self.current = self.full
        self._cpu_seconds, self._clock, self._set, self._log = cpu_seconds, clock, set_threads, log
        start = cpu_seconds()
        self.enabled = self.full > 1 and start is not None and "OMP_NUM_THREADS" not in os.environ
        self.rates: dict[int, float] = {}  # the last window's images/s at each thread count
        self.switches: list[dict[str, float]] = []  # for the run's record
        self.previous = self.full
        self._trial = False
        self._since_probe = 0
        self._window(start)

    def _window(self, cpu: tuple[float, float] | None) -> None:
        self._t0, self._cpu0, self._images = self._clock(), cpu, 0

    def restart(self) -> None:
        """At an epoch's first step: a window measures training steps only, not the validation between epochs."""
        if self.enabled:
            self._window(self._cpu_seconds())

    def observe(self, images: int) -> None:
        """After each training step: `images` trained on in it."""
        if not self.enabled:
            return
        self._images += images
        now = self._clock()
        if now - self._t0 < self.WINDOW_S:
            return
        cpu = self._cpu_seconds()
        if cpu is None or self._cpu0 is None:
            self.enabled = False
            return
        wall = now - self._t0
        others = max(0.0, (cpu[0] - self._cpu0[0]) - (cpu[1] - self._cpu0[1])) / wall
        self._decide(self._images / wall, others)
        self._window(cpu)

    def _decide(self, rate: float, others: float) -> None:
        self.rates[self.current] = rate
        self._since_probe += 1
        if self._trial:  # the window after a probe: keep the faster count
            self._trial = False
            before = self.rates.get(self.previous)
            if before is not None and before > rate:
                self._switch(self.previous, others, "the probe was slower")
            return
        if others < self.BUSY / 2:  # alone again: all threads, and forget what contention measured
            if self.current != self.full:
                self._switch(self.full, others, "others gone")
            self.rates.clear()
            return
        if others < self.BUSY:
            return
        target = max(1, self.full - max(1, round(others))) if self.current == self.full else self.full
        if target not in self.rates or self._since_probe >= self.REPROBE:
            self._switch(target, others, "others busy, probing", trial=True)

    def _switch(self, threads: int, others: float, why: str, trial: bool = False) -> None:
        self.previous, self.current = self.current, threads
        self._trial, self._since_probe = trial, 0
        self._set(threads)
        self.switches.append({"threads": threads, "others_cores": round(others, 2),
                              "img_s_before": round(self.rates.get(self.previous, 0.0), 1)})
        if self._log is not None:
            self._log(f"training threads: {threads} of {self.full} ({why}: other processes used {others:.1f} "
                      f"cores; {self.rates.get(self.previous, 0.0):,.0f} img/s on {self.previous})")

    def close(self) -> None:
        """All threads again, for what runs after training."""
        if self.current != self.full:
            self._set(self.full)
            self.current = self.full


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
