"""Draw fakes from a trained zoo generator and write them as the data is written (32x32 JPEG at quality 75), in
the per-source layout `FAKE/<family>/<index>.jpg`, so every figure computed on them is per family and file format
is no shortcut for a detector.

A folder or a zip may collect several families: a sample folder (or zip) is marked by `zoo-samples.json`, and
writing a family into a marked one replaces that family's images only. Anything else that is not empty is
refused rather than mixed with. Writes are atomic: a zip is written to a temporary and renamed; a family's folder
is filled beside its place and renamed into it.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from realfake.atomic import atomic_dir, atomic_file, atomic_write_text
from realfake.errors import RealfakeError
from realfake.zoo.families import ddpm_schedule, get_family
from realfake.zoo.weights import ZooInfo, load_generator

MARKER = "zoo-samples.json"
MARKER_FORMAT = "realfake-zoo-samples/1"
JPEG_QUALITY = 75  # the stand-in data's (and CIFAKE's) quality
BATCH = 256


@torch.no_grad()
def sample_images(net: nn.Module, info: ZooInfo, n: int, seed: int = 0, device: str | torch.device = "cpu",
                  ) -> np.ndarray:
    """`n` images from the generator as uint8 (n, 32, 32, 3); the same seed gives the same noise."""
    fam = get_family(info.family)
    gen = torch.Generator().manual_seed(seed)
    dev = torch.device(device)
    net = net.to(dev).eval()
    out = np.zeros((n, 32, 32, 3), dtype=np.uint8)
    for start in range(0, n, BATCH):
        m = min(BATCH, n - start)
        if fam.kind == "ddpm":
            x = _ddpm_sample(net, info.settings, m, gen, dev)
        else:
            x = net(torch.randn(m, net.stem.in_features, generator=gen).to(dev))
        x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        out[start : start + m] = x.permute(0, 2, 3, 1).cpu().numpy()
    return out


def _ddpm_sample(net: nn.Module, settings: dict[str, Any], m: int, gen: torch.Generator,
                 dev: torch.device) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020, algorithm 2) with sigma_t^2 = beta_t."""
    beta, alpha, alpha_bar = (v.to(dev) for v in ddpm_schedule(settings))
    x = torch.randn(m, 3, 32, 32, generator=gen).to(dev)
    for t in reversed(range(len(beta))):
        eps = net(x, torch.full((m,), t, device=dev, dtype=torch.long))
        x = (x - beta[t] / (1 - alpha_bar[t]).sqrt() * eps) / alpha[t].sqrt()
        if t > 0:
            x = x + beta[t].sqrt() * torch.randn(x.shape, generator=gen).to(dev)
    return x


def jpeg_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def write_samples(weights: str | Path, n: int, out: str | Path, seed: int = 0, device: str = "cpu") -> Path:
    """Sample `n` images from the generator in `weights` into OUT (a folder, or a .zip); returns OUT."""
    from realfake.device import select_device

    if n < 1:
        raise RealfakeError(f"--n must be at least 1; got {n}")
    dev = select_device(device)
    net, info = load_generator(weights, dev)
    images = sample_images(net, info, n, seed, dev)
    out = Path(out)
    entry = {"n": n, "seed": seed, "weights": info.metadata()}
    prefix = f"FAKE/{info.family}/"
    names = [f"{i:06d}.jpg" for i in range(n)]
    if out.suffix.lower() == ".zip":
        _write_zip(out, prefix, names, images, info.family, entry)
    else:
        _write_folder(out, prefix, names, images, info.family, entry)
    return out


def _marker(old: dict[str, Any] | None, family: str, entry: dict[str, Any]) -> str:
    families = dict((old or {}).get("families", {}))
    families[family] = entry
    return json.dumps({"format": MARKER_FORMAT, "families": dict(sorted(families.items()))}, indent=2) + "\n"


def _read_marker(text: bytes | str, where: Path) -> dict[str, Any]:
    try:
        m = json.loads(text)
        if not isinstance(m, dict) or m.get("format") != MARKER_FORMAT or not isinstance(m.get("families"), dict):
            raise ValueError("not a zoo sample marker")
        return m
    except (ValueError, UnicodeDecodeError):
        raise RealfakeError(f"{where} has a damaged {MARKER}; choose another --out") from None


def _write_folder(out: Path, prefix: str, names: list[str], images: np.ndarray, family: str,
                  entry: dict[str, Any]) -> None:
    if out.exists() and not out.is_dir():
        raise RealfakeError(f"--out {out} is a file; give a folder or a .zip")
    old = None
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise RealfakeError(f"--out {out} is a non-empty folder that is no zoo sample folder (no {MARKER}); "
                                "choose another")
        old = _read_marker((out / MARKER).read_bytes(), out)
    with atomic_dir(out / prefix.rstrip("/")) as tmp:
        for name, img in zip(names, images, strict=True):
            (tmp / name).write_bytes(jpeg_bytes(img))
    atomic_write_text(out / MARKER, _marker(old, family, entry))


def _write_zip(out: Path, prefix: str, names: list[str], images: np.ndarray, family: str,
               entry: dict[str, Any]) -> None:
    old: dict[str, Any] | None = None
    keep: zipfile.ZipFile | None = None
    if out.exists():
        try:
            keep = zipfile.ZipFile(out)
        except (zipfile.BadZipFile, OSError):
            raise RealfakeError(f"--out {out} exists and is not a zip; choose another") from None
        if MARKER not in keep.namelist():
            keep.close()
            raise RealfakeError(f"--out {out} is a zip that is no zoo sample zip (no {MARKER}); choose another")
        old = _read_marker(keep.read(MARKER), out)
    try:
        with atomic_file(out) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:  # JPEGs do not compress
            if keep is not None:  # other families stay as they were
                for info in keep.infolist():
                    if info.filename != MARKER and not info.filename.startswith(prefix):
                        zf.writestr(info, keep.read(info))
            for name, img in zip(names, images, strict=True):
                zf.writestr(prefix + name, jpeg_bytes(img))
            zf.writestr(MARKER, _marker(old, family, entry))
    finally:
        if keep is not None:
            keep.close()
