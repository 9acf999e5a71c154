"""Train one zoo generator on REAL images only: a detector evaluated on the zoo's fakes must never have had its
generators see a fake, or the "unseen generator" figure would be about copies of the data's own FAKE half.

Images come from any layout the project reads (`realfake.data.sources`); only items labelled REAL are decoded
(with CIFAKE's layout, only train/REAL), through the same decode as training and prediction
(`realfake.data.cache.decode_items`), so a data set whose FAKE files are unreadable still trains. The run is
reproducible: the same seed, data and device type give the same weights, byte for byte on the CPU.
"""

from __future__ import annotations

__side__ = "training"  # see tests/test_layers.py

import copy
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from tqdm import tqdm

from realfake.atomic import atomic_write_text, check_writable
from realfake.contract import CLASS_NAMES, __version__, check_images
from realfake.errors import RealfakeError
from realfake.zoo.families import Discriminator, Encoder, Family, ddpm_schedule, get_family
from realfake.zoo.weights import WEIGHTS_FILE, ZooInfo, save_generator

REAL = CLASS_NAMES.index("REAL")
TRAIN_LOG = "train-log.json"


def real_images(data: str | Path, limit: int | None = None, seed: int = 0, progress: bool = False) -> np.ndarray:
    """The REAL training images of `data` as uint8 (N, 32, 32, 3): with a train/ split, train/REAL only.

    FAKE files are never opened. `limit` keeps a seeded random subset (in file order).
    """
    from realfake.data.cache import decode_items
    from realfake.data.sources import open_source

    source = open_source(data)
    items = [it for it in source.items() if it.label == REAL]
    if any(it.split == "train" for it in items):
        items = [it for it in items if it.split == "train"]
    if not items:
        raise RealfakeError(f"no REAL images in {source.display}: the zoo trains on a REAL/ folder's images")
    if limit is not None and limit < len(items):
        keep = np.sort(np.random.default_rng(seed).permutation(len(items))[:limit])
        items = [items[i] for i in keep]
    images, errors = decode_items(source, items, workers=1, progress=progress)
    ok = np.array([e is None for e in errors], dtype=bool)
    if not ok.any():
        raise RealfakeError(f"none of the {len(items)} REAL images in {source.display} could be decoded")
    return np.ascontiguousarray(images[ok])


def train_generator(
    images: np.ndarray,
    family: str,
    out: str | Path,
    seed: int = 0,
    steps: int = 2000,
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = False,
    settings: dict[str, Any] | None = None,
) -> Path:
    """Train `family` on `images` (uint8 NHWC, REAL only) and write OUT/generator.safetensors; returns that path.

    `settings` overrides some of the family's own (say, fewer diffusion steps for a tiny test zoo); they are saved
    in the header, so sampling uses them too. The host's global random state is left as it was (the run draws
    from its own seeded generators).
    """
    from realfake.device import seeded, select_device

    fam = get_family(family)
    unknown = sorted(set(settings or {}) - set(fam.settings))
    if unknown:
        raise RealfakeError(f"family {fam.name} has no setting {', '.join(unknown)}; it has {', '.join(fam.settings)}")
    fam = dataclasses.replace(fam, settings={**fam.settings, **(settings or {})})
    images = check_images(images)
    if len(images) == 0:
        raise RealfakeError("no images to train on")
    if steps < 1 or batch_size < 1:
        raise RealfakeError(f"steps and batch size must be at least 1; got {steps} and {batch_size}")
    out = _check_out(Path(out))
    dev = select_device(device)
    started = time.perf_counter()
    with seeded(seed, dev):  # the caller's random state is left as it was
        loop = {"gan": _train_gan, "vae": _train_vae, "ddpm": _train_ddpm}[fam.kind]
        net, losses = loop(fam, _Batches(images, batch_size, seed, dev), steps, progress)
    seconds = time.perf_counter() - started
    info = ZooInfo(fam.name, dict(fam.settings), seed, steps, batch_size, len(images), __version__)
    path = save_generator(out, net, info)
    atomic_write_text(out / TRAIN_LOG, json.dumps({
        "family": fam.name, "device": str(dev), "seconds": round(seconds, 3), "steps": steps,
        "batch_size": batch_size, "n_real_images": len(images), "torch_threads": torch.get_num_threads(),
        "last_losses": {k: round(v, 5) for k, v in losses.items()},
    }, indent=2) + "\n")
    return path


def _check_out(out: Path) -> Path:
    """A new or empty folder, or an earlier zoo training's folder (replaced); anything else is refused."""
    if out.exists() and not out.is_dir():
        raise RealfakeError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / WEIGHTS_FILE).is_file():
        raise RealfakeError(f"--out {out} is a non-empty folder that holds no zoo generator; choose another")
    check_writable(out / WEIGHTS_FILE)
    return out


class _Batches:
    """Random batches (with random horizontal flips) in [-1, 1], from the seed alone: the run's only data draw."""

    def __init__(self, images: np.ndarray, batch_size: int, seed: int, device: torch.device) -> None:
        self.x = torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device)
        self.n, self.batch_size, self.device = len(images), batch_size, device
        self.gen = torch.Generator().manual_seed(seed)

    def next(self) -> torch.Tensor:
        idx = torch.randint(self.n, (self.batch_size,), generator=self.gen)
        flip = (torch.rand(self.batch_size, generator=self.gen) < 0.5).to(self.device)
        x = self.x[idx.to(self.device)]
        return torch.where(flip[:, None, None, None], x.flip(3), x)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen).to(self.device)

    def randint(self, high: int, n: int) -> torch.Tensor:
        return torch.randint(high, (n,), generator=self.gen).to(self.device)


class _Ema:
    """Exponential moving average of a network's weights (buffers copied), with a warm-up for short runs."""

    def __init__(self, net: nn.Module, decay: float) -> None:
        self.net, self.decay = copy.deepcopy(net).eval(), decay
        for p in self.net.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for pe, p in zip(self.net.parameters(), net.parameters(), strict=True):
            pe.lerp_(p, 1 - d)
        for be, b in zip(self.net.buffers(), net.buffers(), strict=True):
            be.copy_(b)


def _bar(steps: int, progress: bool, name: str) -> tqdm:
    return tqdm(range(steps), desc=f"zoo {name}", unit="step", disable=not progress, file=sys.stderr)


def _train_gan(fam: Family, data: _Batches, steps: int, progress: bool) -> tuple[nn.Module, dict[str, float]]:
    s = fam.settings
    g, d = fam.generator().to(data.device).train(), Discriminator().to(data.device).train()
    betas = tuple(s["betas"])
    opt_g = torch.optim.Adam(g.parameters(), lr=s["lr"], betas=betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=s["lr"], betas=betas)
    ema = _Ema(g, s["ema"])
    hinge = fam.loss == "hinge"
    loss_d = loss_g = torch.zeros(())
    for step in _bar(steps, progress, fam.name):
        real, z = data.next(), data.randn(data.batch_size, g.stem.in_features)
        fake = g(z)
        d_real, d_fake = d(real), d(fake.detach())
        if hinge:
            loss_d = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        else:  # non-saturating (the original GAN's logistic loss)
            loss_d = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        d_gen = d(fake)
        loss_g = -d_gen.mean() if hinge else F.softplus(-d_gen).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        ema.update(g, step)
    return ema.net, {"d": loss_d.item(), "g": loss_g.item()}


def _train_vae(fam: Family, data: _Batches, steps: int, progress: bool) -> tuple[nn.Module, dict[str, float]]:
    dec, enc = fam.generator().to(data.device).train(), Encoder().to(data.device).train()
    opt = torch.optim.Adam([*dec.parameters(), *enc.parameters()], lr=fam.settings["lr"])
    rec = kl = torch.zeros(())
    for _ in _bar(steps, progress, fam.name):
        x = data.next()
        mean, logvar = enc(x)
        z = mean + (0.5 * logvar).exp() * data.randn(*mean.shape)
        rec = ((dec(z) - x) ** 2).sum((1, 2, 3)).mean()
        kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(1).mean()
        loss = rec + fam.settings["beta_kl"] * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return dec.eval(), {"reconstruction": rec.item(), "kl": kl.item()}


def _train_ddpm(fam: Family, data: _Batches, steps: int, progress: bool) -> tuple[nn.Module, dict[str, float]]:
    s = fam.settings
    net = fam.generator().to(data.device).train()
    opt = torch.optim.Adam(net.parameters(), lr=s["lr"])
    ema = _Ema(net, s["ema"])
    alpha_bar = ddpm_schedule(s)[2].to(data.device)
    loss = torch.zeros(())
    for step in _bar(steps, progress, fam.name):
        x = data.next()
        t = data.randint(int(s["timesteps"]), data.batch_size)
        eps = data.randn(*x.shape)
        ab = alpha_bar[t][:, None, None, None]
        loss = F.mse_loss(net(ab.sqrt() * x + (1 - ab).sqrt() * eps, t), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(net, step)
    return ema.net, {"eps_mse": loss.item()}


def train_from_data(data: str | Path, family: str, out: str | Path, **options: Any) -> Path:
    """`realfake zoo train`: REAL images of `data` (see real_images), then train_generator."""
    get_family(family)  # an unknown family or an unusable --out fails before any decoding
    _check_out(Path(out))
    images = real_images(data, limit=options.pop("limit", None), seed=options.get("seed", 0),
                         progress=options.get("progress", False))
    return train_generator(images, family, out, **options)
