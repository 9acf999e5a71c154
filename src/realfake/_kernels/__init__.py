"""Every piece of realfake that rests on a private or version-specific PyTorch or torchvision API, fenced in one
package, so a minor release that moves one breaks a fast path and never a result.

Why: a private op (`torch.ops.mkldnn.*`), a compiled library loaded by file path, a class swap or a private hook can
change or vanish in any release; the rest of realfake imports these pieces from here only (a test greps for the
rest), and each piece is behind a capability check with a public fallback:

- `onednn`: prediction's convolution with its activation inside it, and its weights packed once (oneDNN's private
  ops); fallback: the plain convolution and activation modules (`F.conv2d`, then the activation).
- `jpeg`: torchvision's libjpeg operators, loaded from its folder without importing torchvision, and the header
  reader that picks the files they take; fallback: torchvision's public `decode_jpeg`/`encode_jpeg`, then Pillow.
- `small_maps`: training's convolutions on tiny maps as matrix products, by swapping a Conv2d's class for the
  time of training; fallback: the nn.Conv2d as it is.
- `state_dict`: a module's hook run before its weights load, through the public registration where torch has it
  (2.5 on) and the private one before; not a fast path (it is how old weights load), so the switch below leaves it.
- `cpu_caps`: the CPU's ISA flags from torch's private `torch.cpu._is_*_supported` probes, the last source
  `realfake.device.cpu_info` asks (after /proc/cpuinfo and the public `get_capabilities`); fallback: not known.

The range tested is pinned in pyproject.toml (torch and torchvision, an upper bound below the next minor
release). Outside it nothing is assumed: each check runs on a probe the first time its piece is asked for in a
process, a piece whose op is missing, fails or gives other numbers than its public fallback is off, its fallback
runs, and one debug-level line on the `realfake.kernels` logger says which piece is off and why (`pieces_off`
lists them). Environment REALFAKE_KERNELS=0, set before the process starts, turns every fast path off: what runs
then is the public fallbacks alone, the reference that the tests hold the fast paths to.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import logging
import os

ENV = "REALFAKE_KERNELS"
log = logging.getLogger("realfake.kernels")
_off: dict[str, str] = {}


def fast_paths_enabled() -> bool:
    """False where REALFAKE_KERNELS is 0 (or false, no, off): every piece then runs its public fallback."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def turned_off(piece: str, why: str) -> None:
    """Record that `piece` runs its fallback, with one debug line the first time for each reason."""
    if _off.get(piece) != why:
        _off[piece] = why
        log.debug("realfake fast path %s is off: %s", piece, why)


def enabled(piece: str) -> bool:
    """`fast_paths_enabled`, recording `piece` as off where the switch is."""
    if fast_paths_enabled():
        return True
    turned_off(piece, f"{ENV}=0")
    return False


def pieces_off() -> dict[str, str]:
    """The pieces found off so far in this process, each with its reason."""
    return dict(_off)
