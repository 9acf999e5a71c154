"""A trained zoo generator on disk: one safetensors file whose header says what it is, so sampling needs nothing
else and no pickle is ever loaded.

The header metadata (strings only, as safetensors wants) holds the format tag, the family, its settings as JSON,
the seed, steps, batch size, the number of REAL images trained on and the realfake version. Nothing in it changes
between two runs with the same inputs (no time stamps), so the same seed on the same data gives the same bytes.

Training writes fp32; `pack_generator` writes the same weights as fp16 (header `dtype: float16`), half the size,
for the zoo shipped inside the package. Loading upcasts either to fp32, and refuses non-finite weights.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from realfake.atomic import atomic_write_bytes
from realfake.errors import RealfakeError, one_line
from realfake.zoo.families import Family, get_family

WEIGHTS_FILE = "generator.safetensors"
FORMAT = "realfake-zoo/1"
PACKED_SUFFIX = ".safetensors"  # a packed generator is <family>.safetensors
MAX_PACKED_BYTES = 3 * 2**20  # what one packaged generator may add to the wheel
_MAX_HEADER = 1 << 24
_INT_FIELDS = ("seed", "steps", "batch_size", "n_real_images")


@dataclass(frozen=True)
class ZooInfo:
    """What the header says about a trained generator."""

    family: str
    settings: dict[str, Any]
    seed: int
    steps: int
    batch_size: int
    n_real_images: int
    realfake_version: str

    def metadata(self) -> dict[str, str]:
        return {"format": FORMAT, "family": self.family, "settings": json.dumps(self.settings, sort_keys=True),
                "seed": str(self.seed), "steps": str(self.steps), "batch_size": str(self.batch_size),
                "n_real_images": str(self.n_real_images), "realfake_version": self.realfake_version}


def weights_path(path: str | Path) -> Path:
    """The weights file for a trained-zoo folder (or the file itself)."""
    p = Path(path)
    return p / WEIGHTS_FILE if p.is_dir() else p


def save_generator(out_dir: str | Path, net: nn.Module, info: ZooInfo) -> Path:
    """Write the generator's state (fp32, contiguous, sorted by name) and its header in one atomic write."""
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() if v.is_floating_point() else v.detach().cpu()
               for k, v in sorted(net.state_dict().items())}
    path = Path(out_dir) / WEIGHTS_FILE
    atomic_write_bytes(path, _canonical(st_save(tensors, metadata=info.metadata())))
    return path


def _canonical(data: bytes) -> bytes:
    """The same file with its JSON header's keys sorted: safetensors writes the metadata from a hash map, in an
    order that changes from run to run, and a rerun must give the same bytes. Offsets are relative to the data,
    so a re-written header keeps them valid."""
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    raw = header.encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data stays 8-byte aligned, as safetensors writes it
    return len(raw).to_bytes(8, "little") + raw + data[8 + n :]


def _info(meta: dict[str, str] | None, where: Path) -> tuple[ZooInfo, Family]:
    if not meta or meta.get("format") != FORMAT:
        raise RealfakeError(f"{where} is not a realfake zoo generator (no '{FORMAT}' header); "
                            "train one with: realfake zoo train")
    try:
        family = get_family(meta["family"])
        settings = json.loads(meta["settings"])
        if not isinstance(settings, dict):
            raise ValueError("settings are not a JSON object")
        ints = {k: int(meta[k]) for k in _INT_FIELDS}
        info = ZooInfo(meta["family"], settings, realfake_version=meta.get("realfake_version", "?"), **ints)
    except RealfakeError as e:
        raise RealfakeError(f"{where}: {e}") from None
    except (KeyError, ValueError, TypeError) as e:
        raise RealfakeError(f"{where}: malformed zoo header ({e.__class__.__name__}: {e}); train it again") from None
    return info, family


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ZooInfo]:
    """The trained generator (eval mode) and its header; anything unknown or malformed is a one-line error."""
    p = weights_path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise RealfakeError(f"cannot read {p}: {e.strerror or e}") from None
    try:
        tensors = st_load(data)
        meta = _header_metadata(data)
    except (SafetensorError, ValueError, json.JSONDecodeError, OverflowError) as e:
        raise RealfakeError(f"{p} is not a readable safetensors file ({e})") from None
    info, family = _info(meta, p)
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}  # fp16 packs: fp32 here
    bad = sorted(k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise RealfakeError(f"{p}: non-finite weights in {bad[0]}{more}; the file is damaged or its training "
                            "diverged: train it again")
    try:
        net = family.generator(info.settings)
        net.load_state_dict(tensors, strict=True)
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        first = one_line(e)
        raise RealfakeError(f"{p}: weights do not fit family {info.family!r} ({first})") from None
    return net.to(device).eval(), info


def _header_metadata(data: bytes) -> dict[str, str] | None:
    """The `__metadata__` of a safetensors byte string (an 8-byte little-endian length, then the JSON header)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header.get("__metadata__")
    return meta if isinstance(meta, dict) else None


def read_info(path: str | Path) -> ZooInfo:
    """The header of a generator file (fp32 or packed) without reading its weights: listing a zoo stays cheap."""
    p = weights_path(path)
    try:
        with p.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= _MAX_HEADER:
                raise ValueError(f"header length {n}")
            meta = _header_metadata(n.to_bytes(8, "little") + f.read(n))
    except OSError as e:
        raise RealfakeError(f"cannot read {p}: {e.strerror or e}") from None
    except (ValueError, json.JSONDecodeError, AttributeError) as e:
        raise RealfakeError(f"{p} is not a readable safetensors file ({e})") from None
    return _info(meta, p)[0]


def pack_generator(path: str | Path, out_dir: str | Path) -> Path:
    """Write the generator in `path` as OUT_DIR/<family>.safetensors in fp16 (same header plus `dtype: float16`,
    sorted and canonical, so packing is reproducible); a weight that fp16 cannot hold is refused."""
    net, info = load_generator(path)
    tensors = {}
    for k, v in sorted(net.state_dict().items()):
        v = v.detach().cpu()
        if v.is_floating_point():
            v = v.to(torch.float16)
            if not bool(torch.isfinite(v).all()):
                raise RealfakeError(f"{weights_path(path)}: weight {k} exceeds what fp16 holds (|w| > 65504); "
                                    "it cannot be packed")
        tensors[k] = v.contiguous()
    data = _canonical(st_save(tensors, metadata={**info.metadata(), "dtype": "float16"}))
    if len(data) > MAX_PACKED_BYTES:
        raise RealfakeError(f"{weights_path(path)}: packed it takes {len(data) / 2**20:.1f} MiB, over the "
                            f"{MAX_PACKED_BYTES / 2**20:.0f} MiB a packaged generator may take")
    out = Path(out_dir) / f"{info.family}{PACKED_SUFFIX}"
    atomic_write_bytes(out, data)
    return out
