"""The CPU's ISA flags as torch's private probes report them (`torch.cpu._is_*_supported`): the last source
`realfake.device.cpu_info` asks, after /proc/cpuinfo and the public `torch.cpu.get_capabilities`, for a torch
that lacks the latter on a system without the former.

Private functions can be renamed or dropped in any release, so each is looked up by name and a missing or failing
one tells nothing; the public fallback is "not known" (an empty answer: each flag None), which costs only the
precision default (fp32 where native bf16 cannot be confirmed). REALFAKE_KERNELS=0 skips the probes.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import functools

import torch

from realfake._kernels import enabled, turned_off

PIECE = "cpu_probes"
# realfake's ISA flag (device.ISA_FLAGS, /proc/cpuinfo's spelling) -> torch.cpu's private probe for it.
PROBES: dict[str, str] = {
    "avx2": "_is_avx2_supported", "avx512f": "_is_avx512_supported", "avx512_bf16": "_is_avx512_bf16_supported",
    "amx_tile": "_is_amx_tile_supported", "avx512_vnni": "_is_vnni_supported",
}


def probed_flags() -> dict[str, bool]:
    """The ISA flags torch's private probes can tell (True/False), where switched on and this torch has them;
    an empty dict (nothing known, the public fallback) otherwise."""
    if not enabled(PIECE):
        return {}
    flags, why = _probe()
    if why is not None:
        turned_off(PIECE, why)
    return dict(flags)


@functools.cache
def _probe() -> tuple[dict[str, bool], str | None]:
    """Each probe asked once a process: the flags it answered, and why some could not be asked (None: all could)."""
    flags: dict[str, bool] = {}
    failed: list[str] = []
    for flag, name in PROBES.items():
        fn = getattr(torch.cpu, name, None)
        try:
            if fn is None:
                raise AttributeError(name)
            flags[flag] = bool(fn())
        except Exception:  # noqa: BLE001 - a private probe: any failure means "not known this way"
            failed.append(name)
    return flags, (f"this torch lacks or fails {', '.join(failed)}" if failed else None)
