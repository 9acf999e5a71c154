"""The zoo's generator families by name: each makes pixels its own way, so a detector tested on them is tested
on more than one up-sampling fingerprint.

A family is a recipe: which network turns noise into a 32x32 image (the only network saved and shipped), how it
is trained (`kind`: gan, vae or ddpm) and with which loss and normalisation. Discriminators and encoders exist
only while training.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.nn.utils import spectral_norm

from realfake.errors import RealfakeError

Z_DIM = 64  # latent size of every GAN and VAE decoder: small enough to keep the decoders under 1.5 M parameters


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class _Up(nn.Module):
    """One 2x up-sampling step; `how` is what differs between the GAN families (and leaves its fingerprint)."""

    def __init__(self, cin: int, cout: int, how: str, norm: str, act: Callable[[], nn.Module]) -> None:
        super().__init__()
        if how == "transposed":
            up: list[nn.Module] = [nn.ConvTranspose2d(cin, cout, 4, 2, 1)]
        elif how in ("nearest", "bilinear"):
            up = [nn.Upsample(scale_factor=2, mode=how, **({"align_corners": False} if how == "bilinear" else {})),
                  nn.Conv2d(cin, cout, 3, 1, 1)]
        elif how == "subpixel":
            up = [nn.Conv2d(cin, cout * 4, 3, 1, 1), nn.PixelShuffle(2)]
        else:  # pragma: no cover - families are fixed below
            raise ValueError(how)
        self.body = nn.Sequential(*up, _norm(norm, cout), act())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Decoder(nn.Module):
    """Latent (N, Z_DIM) → image (N, 3, 32, 32) in [-1, 1]: a linear map to 4x4, three 2x steps, a 3x3 to RGB."""

    def __init__(self, how: str, norm: str, width: int = 192, leaky: bool = False) -> None:
        super().__init__()
        def act() -> nn.Module:
            return nn.LeakyReLU(0.2) if leaky else nn.ReLU()
        self.width = width
        self.stem = nn.Linear(Z_DIM, 4 * 4 * width)
        w = [width, width // 2, width // 4, width // 8]
        self.ups = nn.Sequential(*(_Up(w[i], w[i + 1], how, norm, act) for i in range(3)))
        self.to_rgb = nn.Conv2d(w[3], 3, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.stem(z).view(len(z), self.width, 4, 4)
        return torch.tanh(self.to_rgb(self.ups(F.relu(x))))


class Discriminator(nn.Module):
    """Spectral-norm convolutions, 32 → 4 pixels, one score per image (training only, never saved)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        w = [width, width * 2, width * 4]
        self.body = nn.Sequential(
            spectral_norm(nn.Conv2d(3, w[0], 3, 1, 1)), nn.LeakyReLU(0.1),
            spectral_norm(nn.Conv2d(w[0], w[0], 4, 2, 1)), nn.LeakyReLU(0.1),  # 16
            spectral_norm(nn.Conv2d(w[0], w[1], 4, 2, 1)), nn.LeakyReLU(0.1),  # 8
            spectral_norm(nn.Conv2d(w[1], w[2], 4, 2, 1)), nn.LeakyReLU(0.1),  # 4
        )
        self.head = spectral_norm(nn.Linear(w[2] * 16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1)).squeeze(1)


class Encoder(nn.Module):
    """Image → (mean, log-variance) of the VAE's latent (training only, never saved)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 4, 2, 1), nn.GroupNorm(8, width), nn.SiLU(),  # 16
            nn.Conv2d(width, width * 2, 4, 2, 1), nn.GroupNorm(8, width * 2), nn.SiLU(),  # 8
            nn.Conv2d(width * 2, width * 4, 4, 2, 1), nn.GroupNorm(8, width * 4), nn.SiLU(),  # 4
        )
        self.head = nn.Linear(width * 4 * 16, 2 * Z_DIM)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.head(self.body(x).flatten(1)).chunk(2, dim=1)
        return mean, logvar.clamp(-10, 10)


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int) -> None:
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, 1, 1)
        self.t = nn.Linear(tdim, cout)
        self.n2, self.c2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.silu(self.n1(x))) + self.t(t)[:, :, None, None]
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


class Denoiser(nn.Module):
    """A two-level U-Net that predicts the noise in a noised image at step t (DDPM's epsilon parameterisation)."""

    def __init__(self, width: int = 48) -> None:
        super().__init__()
        self.tdim = width * 2
        self.time = nn.Sequential(nn.Linear(width, self.tdim), nn.SiLU(), nn.Linear(self.tdim, self.tdim))
        self.inp = nn.Conv2d(3, width, 3, 1, 1)
        self.d1 = _ResBlock(width, width, self.tdim)  # 32
        self.down1 = nn.Conv2d(width, width, 3, 2, 1)  # 16
        self.d2 = _ResBlock(width, width * 2, self.tdim)
        self.down2 = nn.Conv2d(width * 2, width * 2, 3, 2, 1)  # 8
        self.mid = _ResBlock(width * 2, width * 2, self.tdim)
        self.u2 = _ResBlock(width * 4, width * 2, self.tdim)  # 16, with the skip
        self.u1 = _ResBlock(width * 3, width, self.tdim)  # 32, with the skip
        self.out = nn.Sequential(nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, 3, 3, 1, 1))
        self.width = width

    def _embed(self, t: torch.Tensor) -> torch.Tensor:
        half = self.width // 2
        freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
        a = t.float()[:, None] * freqs[None]
        return self.time(torch.cat([a.sin(), a.cos()], dim=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        te = self._embed(t)
        h1 = self.d1(self.inp(x), te)
        h2 = self.d2(self.down1(h1), te)
        h = self.mid(self.down2(h2), te)
        h = self.u2(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h2], 1), te)
        h = self.u1(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h1], 1), te)
        return self.out(h)


@dataclass(frozen=True)
class Family:
    """A generator recipe: what makes the pixels, how it learns, and its training settings (saved with weights)."""

    name: str
    kind: str  # gan | vae | ddpm: which training loop and which sampler
    loss: str  # hinge | non-saturating | mse+kl | eps-mse
    norm: str  # batch | group | none, in the saved network
    about: str
    settings: dict[str, Any] = field(default_factory=dict)

    def generator(self, settings: dict[str, Any] | None = None) -> nn.Module:
        """The network that makes images (the one saved): decoder of noise, or the diffusion denoiser."""
        s = {**self.settings, **(settings or {})}
        if self.kind == "ddpm":
            return Denoiser(int(s["width"]))
        return Decoder(str(s["up"]), self.norm, int(s["width"]), bool(s.get("leaky", False)))


def _fam(name: str, kind: str, loss: str, norm: str, about: str, **settings: Any) -> Family:
    base = {"lr": 2e-4, "betas": [0.0, 0.9], "ema": 0.999} if kind == "gan" else {"lr": 1e-3, "ema": 0.999}
    return Family(name, kind, loss, norm, about, {**base, **settings})


FAMILIES: dict[str, Family] = {f.name: f for f in (
    _fam("gan-transposed", "gan", "hinge", "batch", "DCGAN-style: 4x4 transposed convolutions, batch norm, ReLU",
         up="transposed", width=192),
    _fam("gan-nearest", "gan", "non-saturating", "group", "nearest-neighbour up-sampling + 3x3 conv, group norm",
         up="nearest", width=192, betas=[0.5, 0.999]),
    _fam("gan-bilinear", "gan", "hinge", "none", "bilinear up-sampling + 3x3 conv, no normalisation",
         up="bilinear", width=192),
    _fam("gan-subpixel", "gan", "non-saturating", "batch", "sub-pixel convolution (PixelShuffle), LeakyReLU",
         up="subpixel", width=128, leaky=True, betas=[0.5, 0.999]),
    _fam("vae", "vae", "mse+kl", "group", "VAE decoder (transposed convolutions); samples decode prior noise",
         up="transposed", width=192, beta_kl=1.0, ema=0.0),
    _fam("ddpm", "ddpm", "eps-mse", "group", "denoising diffusion: a small U-Net, ancestral sampling",
         width=48, timesteps=100, beta_start=1e-4, beta_end=0.05, lr=2e-4),
)}


def get_family(name: str) -> Family:
    """The family of that name, or a one-line error listing the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise RealfakeError(f"unknown generator family {name!r}; known: {', '.join(FAMILIES)}") from None


def ddpm_schedule(settings: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(beta, alpha, alpha_bar) per step, linear in beta: one definition for training and sampling."""
    beta = torch.linspace(float(settings["beta_start"]), float(settings["beta_end"]), int(settings["timesteps"]),
                          dtype=torch.float64)
    alpha = 1 - beta
    return beta.float(), alpha.float(), torch.cumprod(alpha, 0).float()


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
