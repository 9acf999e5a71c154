"""Batches straight from a device-resident uint8 tensor; augmentation is whole-batch tensor ops.

Following airbench: no DataLoader workers, no per-sample Python. The data set is small (120k x 3 KB),
so it lives on the training device, and each step is one gather, one cast and two masked flips.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


def to_device_uint8(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 array to an (N, 3, H, W) uint8 tensor on `device` (channels_last memory)."""
    t = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return t.permute(0, 3, 1, 2)  # a view: NHWC memory read as NCHW is exactly channels_last


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] to float [0,1], the scaling the seed notebook used."""
    return batch.float().div_(255.0).contiguous(memory_format=torch.channels_last)


def random_flips(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image horizontally with p=0.5 and, independently, vertically with p=0.5."""
    n = x.shape[0]
    coins = torch.rand(2, n, generator=generator, device=generator.device) < 0.5
    coins = coins.to(x.device).view(2, n, 1, 1, 1)
    x = torch.where(coins[0], x.flip(3), x)
    return torch.where(coins[1], x.flip(2), x)


def jpeg_roundtrip(images: np.ndarray, quality: int | np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 images JPEG-encoded and decoded again with Pillow, at one or per-image qualities.

    JPEG has no tensor form, so this runs on the CPU; at 32x32 one image costs tens of microseconds.
    """
    qs = np.broadcast_to(np.asarray(quality, dtype=int), (len(images),))
    out = np.empty_like(images)
    for i, (img, q) in enumerate(zip(images, qs, strict=True)):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(q))
        buf.seek(0)
        with Image.open(buf, formats=["JPEG"]) as decoded:  # naming the format skips Pillow's sniffing (~2x)
            out[i] = np.asarray(decoded)  # an RGB JPEG decodes to RGB
    return out


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each (3, H, W) float image with its own sigma (pixels; 0 = unchanged), as two separable convs."""
    n, c, h, w = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    radius = min(radius, (min(h, w) - 1))  # reflect padding needs the image to be wider than the kernel
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    s = sigma.to(x.device, torch.float32).clamp_min(1e-6).view(n, 1)
    k = torch.exp(-0.5 * (taps.view(1, -1) / s) ** 2)
    k = k / k.sum(1, keepdim=True)  # sigma ~ 0 makes a delta: the image passes through
    k = k.repeat_interleave(c, 0)  # one kernel per (image, channel)
    y = x.float().reshape(1, n * c, h, w)
    y = torch.nn.functional.pad(y, (radius, radius, 0, 0), mode="reflect")
    y = torch.nn.functional.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = torch.nn.functional.pad(y, (0, 0, radius, radius), mode="reflect")
    y = torch.nn.functional.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w).to(x.dtype).contiguous(memory_format=torch.channels_last)


SIM_KINDS = ("transposed", "pixelshuffle", "nearest", "bilinear")


def decoder_residual(down: torch.Tensor, generator: torch.Generator, kind: str) -> torch.Tensor:
    """The output of a freshly drawn, randomly initialised up-sampling decoder on `down` (N, 3, h, w float), at
    2x its size, with zero mean and unit std per image: the up-sampling trace a generator of that kind leaves.

    Weights are drawn from `generator` (on its own device, then moved), so the same generator state gives the
    same decoder: the simulation is as repeatable as the rest of the epoch.
    """
    n, dev, c = down.shape[0], down.device, 16

    def draw(*shape: int, fan_in: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator, device=generator.device) / math.sqrt(fan_in)).to(dev)

    conv = torch.nn.functional.conv2d
    if kind == "transposed":
        h = torch.nn.functional.conv_transpose2d(down, draw(3, c, 4, 4, fan_in=48), stride=2, padding=1)
    elif kind == "pixelshuffle":
        h = torch.nn.functional.pixel_shuffle(conv(down, draw(4 * c, 3, 3, 3, fan_in=27), padding=1), 2)
    elif kind in ("nearest", "bilinear"):
        up = torch.nn.functional.interpolate(
            down, scale_factor=2, mode=kind, **({"align_corners": False} if kind == "bilinear" else {}))
        h = conv(up, draw(c, 3, 3, 3, fan_in=27), padding=1)
    else:
        raise ValueError(f"unknown decoder kind {kind!r}; known: {', '.join(SIM_KINDS)}")
    h = torch.nn.functional.leaky_relu(h, 0.2)
    r = conv(h, draw(3, c, 3, 3, fan_in=9 * c), padding=1)
    r = r - r.mean(dim=(2, 3), keepdim=True)
    return r / r.flatten(1).std(1).clamp_min(1e-6).view(n, 1, 1, 1)


@dataclass(frozen=True)
class ArtefactSimulation:
    """Artefact simulation (after Zhang et al. 2019, AutoGAN): extra FAKEs made from REAL images alone.

    In each batch a share `fake_share` of the FAKE slots is replaced by a REAL image of the same batch plus the
    residual of a random up-sampling decoder (2x average-pool down, then transposed conv / PixelShuffle /
    nearest / bilinear up + conv), at an amplitude of `amplitude` (in 1/255 steps), saved as JPEG at `quality`
    like the data's own images; as many REAL slots get the same JPEG pass, so that a second compression is
    no cue for FAKE. The aim is a model that learns "made by up-sampling" rather than "made by this GAN".
    Measured (benchmarks/prototypes/gen_sim.py and README "Generators it never saw"): with flips only it
    caught 10 points more of a held-out generator's fakes but cost 0.7 points at home; it is an option
    (`--augment simulate`), not the recipe.
    """

    fake_share: float = 0.25
    amplitude: tuple[float, float] = (2.0, 8.0)
    quality: int = 75

    def apply(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(N, 3, H, W) uint8 batch and its labels -> the batch with simulated FAKEs in some FAKE slots."""
        g = generator.device
        fake = torch.nonzero(y > 0.5).flatten().cpu()
        real = torch.nonzero(y < 0.5).flatten().cpu()
        pick = fake[torch.rand(len(fake), generator=generator, device=g).cpu() < self.fake_share]
        again = real[torch.rand(len(real), generator=generator, device=g).cpu() < self.fake_share]
        if len(pick) == 0 or len(real) == 0:
            return x
        src = real[torch.randint(len(real), (len(pick),), generator=generator, device=g).cpu()]
        kind = SIM_KINDS[int(torch.randint(len(SIM_KINDS), (1,), generator=generator, device=g))]
        lo, hi = self.amplitude
        alpha = (lo + (hi - lo) * torch.rand(len(pick), 1, 1, 1, generator=generator, device=g)) / 255
        xs = x[src.to(x.device)].float() / 255
        residual = decoder_residual(torch.nn.functional.avg_pool2d(xs, 2), generator, kind)
        sim = (xs + alpha.to(x.device) * residual).clamp(0, 1).mul(255).add(0.5).to(torch.uint8)
        rows = torch.cat([pick, again])
        batch = torch.cat([sim, x[again.to(x.device)]]).permute(0, 2, 3, 1).cpu().numpy()
        done = torch.from_numpy(jpeg_roundtrip(batch, self.quality)).to(x.device).permute(0, 3, 1, 2)
        x = x.clone()
        x[rows.to(x.device)] = done
        return x


@dataclass(frozen=True)
class RobustAugment:
    """CNNDetection-style training degradations: random JPEG re-compression and Gaussian blur.

    Each image is JPEG-compressed with probability `jpeg_p` at a quality drawn uniformly from
    `jpeg_quality`, and blurred with probability `blur_p` with a sigma drawn from `blur_sigma`.
    """

    # Defaults measured on the stand-in (fast, 6,000 images, 3 epochs): at 0.5/0.2 clean accuracy fell 3.5
    # points below the plain model's; at 0.3/0.1 it fell 0.8 while JPEG-30, blur and resampling gained 7-8.
    jpeg_p: float = 0.3
    jpeg_quality: tuple[int, int] = (30, 95)
    blur_p: float = 0.1
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    simulation: ArtefactSimulation | None = None  # `--augment simulate`: robust + artefact simulation

    def jpeg(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(N, 3, H, W) uint8 batch -> the same with a random subset JPEG round-tripped on the CPU."""
        n = x.shape[0]
        pick = torch.rand(n, generator=generator, device=generator.device) < self.jpeg_p
        lo, hi = self.jpeg_quality
        q = torch.randint(lo, hi + 1, (n,), generator=generator, device=generator.device)
        idx = torch.nonzero(pick).flatten().cpu()
        if len(idx) == 0:
            return x
        chosen = x[idx.to(x.device)].permute(0, 2, 3, 1).cpu().numpy()  # NHWC for Pillow
        done = torch.from_numpy(jpeg_roundtrip(chosen, q[pick].cpu().numpy())).to(x.device).permute(0, 3, 1, 2)
        x = x.clone()
        x[idx.to(x.device)] = done
        return x

    def blur(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(N, 3, H, W) float batch -> a random subset blurred on the batch's device."""
        n = x.shape[0]
        pick = torch.rand(n, generator=generator, device=generator.device) < self.blur_p
        lo, hi = self.blur_sigma
        sigma = lo + (hi - lo) * torch.rand(n, generator=generator, device=generator.device)
        idx = torch.nonzero(pick).flatten().to(x.device)
        if len(idx) == 0:
            return x
        x = x.clone()
        x[idx] = gaussian_blur(x[idx], sigma[pick].to(x.device))
        return x


def train_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    augment: bool = True,
    robust: RobustAugment | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled epoch of (float images, float labels); the last, smaller batch is kept (unless of one).

    With `robust`, a random share of each batch is JPEG re-compressed (on the CPU, before the cast) and
    blurred (on the device, after it), so the model cannot lean on compression or sharpness alone; with its
    `simulation`, some FAKE slots first become simulated decoder outputs of REAL images (ArtefactSimulation).
    """
    order = torch.randperm(len(labels), generator=generator, device=generator.device).to(images.device)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        if len(idx) < 2:  # BatchNorm cannot train on a batch of one; that image is seen next epoch
            break
        xb = images[idx]
        if robust is not None and robust.simulation is not None:
            xb = robust.simulation.apply(xb, labels[idx], generator)
        if robust is not None:
            xb = robust.jpeg(xb, generator)
        x = to_float(xb)
        if robust is not None:
            x = robust.blur(x, generator)
        if augment:
            x = random_flips(x, generator)
        yield x, labels[idx].float()


def eval_batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, images.shape[0], batch_size):
        yield to_float(images[start : start + batch_size])
