"""Batches straight from a device-resident uint8 tensor; augmentation is whole-batch tensor ops.

Following airbench: no DataLoader workers, no per-sample Python. The data set is small (120k x 3 KB),
so it lives on the training device, and each step is one gather, one cast and two masked flips.
"""

from __future__ import annotations

__side__ = "training"  # see tests/test_layers.py

import functools
import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from realfake._kernels.jpeg import roundtrip_codec
from realfake.data.tensors import to_float


def random_flips(
    x: torch.Tensor, generator: torch.Generator, n_global: int | None = None, mine: slice = slice(None)
) -> torch.Tensor:
    """Flip each image horizontally with p=0.5 and, independently, vertically with p=0.5.

    With several training processes, `x` is this rank's rows `mine` of a global batch of `n_global`: the coins
    are drawn for the whole batch on every rank (so every rank's generator stays in step) and sliced.
    """
    n = x.shape[0] if n_global is None else n_global
    coins = torch.rand(2, n, generator=generator, device=generator.device) < 0.5
    coins = coins[:, mine].to(x.device).view(2, x.shape[0], 1, 1, 1)
    x = torch.where(coins[0], x.flip(3), x)
    return torch.where(coins[1], x.flip(2), x)


def jpeg_roundtrip(images: np.ndarray, quality: int | np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 images JPEG-encoded and decoded again, at one or per-image qualities.

    JPEG has no tensor form, so this runs on the CPU, image by image. Through Pillow it was mostly Python around
    the codec and most of a GPU training epoch; torchvision's libjpeg calls give the same bytes (the same library
    and settings: bit-identical, checked in the tests) in about half the time (docs/performance.md#on-a-gpu).
    Threads did not help: at 32x32 the calls hold the GIL for most of their time (4-16 threads were slower).
    """
    qs = np.broadcast_to(np.asarray(quality, dtype=int), (len(images),))
    src = np.ascontiguousarray(images)
    src_t = torch.from_numpy(src if src.flags.writeable else src.copy())
    out = np.empty_like(src)
    codec = _jpeg_codec()
    for i in range(len(src)):
        out[i] = codec(src_t[i], int(qs[i]))
    return out


@functools.cache
def _jpeg_codec() -> Callable[[torch.Tensor, int], np.ndarray]:
    """torchvision's JPEG round trip where its image library loads, else Pillow's (the same bytes, slower).

    Its operators are called directly (realfake._kernels.jpeg), so training does not import torchvision for them
    (seconds of CPU); torchvision's public functions are the fallback."""
    return roundtrip_codec(_pillow_roundtrip)


def _pillow_roundtrip(img: torch.Tensor, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img.numpy()).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf, formats=["JPEG"]) as decoded:  # naming the format skips Pillow's sniffing: faster
        return np.asarray(decoded)  # an RGB JPEG decodes to RGB


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float | None = None) -> torch.Tensor:
    """Blur each (3, H, W) float image with its own sigma (pixels; 0 = unchanged), as two separable convs.

    The kernels reach 3 x `max_sigma` (default: the largest sigma here); a rank blurring its share of a batch
    passes the whole batch's, so its images come out bit for bit as in one process.
    """
    n, c, h, w = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max() if max_sigma is None else max_sigma)))
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
_SIM_WIDTH = 16  # channels of the random decoder's hidden layer


def draw_decoder(generator: torch.Generator, kind: str) -> list[torch.Tensor]:
    """The weights of a freshly drawn random up-sampling decoder of `kind` (on the generator's device).

    Drawn apart from applying them, so that every training process draws the same decoder (its generator
    stays in step) even when none of its own images is picked for simulation.
    """
    c = _SIM_WIDTH

    def draw(*shape: int, fan_in: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=generator.device) / math.sqrt(fan_in)

    if kind == "transposed":
        first = draw(3, c, 4, 4, fan_in=48)
    elif kind == "pixelshuffle":
        first = draw(4 * c, 3, 3, 3, fan_in=27)
    elif kind in ("nearest", "bilinear"):
        first = draw(c, 3, 3, 3, fan_in=27)
    else:
        raise ValueError(f"unknown decoder kind {kind!r}; known: {', '.join(SIM_KINDS)}")
    return [first, draw(3, c, 3, 3, fan_in=9 * c)]


def apply_decoder(down: torch.Tensor, weights: list[torch.Tensor], kind: str) -> torch.Tensor:
    """`draw_decoder`'s decoder on `down` (N, 3, h, w float): its output at 2x the size, zero mean and unit std
    per image: the up-sampling trace a generator of that kind leaves."""
    n, dev = down.shape[0], down.device
    first, last = (w.to(dev) for w in weights)
    conv = torch.nn.functional.conv2d
    if kind == "transposed":
        h = torch.nn.functional.conv_transpose2d(down, first, stride=2, padding=1)
    elif kind == "pixelshuffle":
        h = torch.nn.functional.pixel_shuffle(conv(down, first, padding=1), 2)
    else:
        up = torch.nn.functional.interpolate(
            down, scale_factor=2, mode=kind, **({"align_corners": False} if kind == "bilinear" else {}))
        h = conv(up, first, padding=1)
    h = torch.nn.functional.leaky_relu(h, 0.2)
    r = conv(h, last, padding=1)
    r = r - r.mean(dim=(2, 3), keepdim=True)
    return r / r.flatten(1).std(1).clamp_min(1e-6).view(n, 1, 1, 1)


def decoder_residual(down: torch.Tensor, generator: torch.Generator, kind: str) -> torch.Tensor:
    """A freshly drawn random decoder of `kind` applied to `down`; the same generator state, the same decoder."""
    return apply_decoder(down, draw_decoder(generator, kind), kind)


Take = Callable[[torch.Tensor], torch.Tensor]  # training-set rows (CPU int64) -> (n, 3, H, W) uint8 on the device


@dataclass(frozen=True)
class ArtefactSimulation:
    """Artefact simulation (after Zhang et al. 2019, AutoGAN): extra FAKEs made from REAL images alone.

    In each batch a share `fake_share` of the FAKE slots is replaced by a REAL image of the same batch plus the
    residual of a random up-sampling decoder (2x average-pool down, then transposed conv / PixelShuffle /
    nearest / bilinear up + conv), at an amplitude of `amplitude` (in 1/255 steps), saved as JPEG at `quality`
    like the data's own images; as many REAL slots get the same JPEG pass, so that a second compression is
    no cue for FAKE. The aim is a model that learns "made by up-sampling" rather than "made by this GAN".
    With flips only it caught more of a held-out generator's fakes but cost accuracy at home
    (research/gen_sim.py, docs/guide/generalization.md); it is an option
    (`--augment simulate`), not the recipe.
    """

    fake_share: float = 0.25
    amplitude: tuple[float, float] = (2.0, 8.0)
    quality: int = 75

    def apply(
        self, x: torch.Tensor, batch: Batch, generator: torch.Generator, take: Take | None = None
    ) -> torch.Tensor:
        """This rank's uint8 images `x` of `batch`, with simulated FAKEs in some of its FAKE slots.

        Every draw is made for the whole (global) batch, so each rank simulates exactly the slots one process
        would; a source REAL image held by another rank is fetched with `take` (training-set rows).
        """
        g = generator.device
        y = batch.labels
        fake = torch.nonzero(y > 0.5).flatten()
        real = torch.nonzero(y < 0.5).flatten()
        pick = fake[torch.rand(len(fake), generator=generator, device=g).cpu() < self.fake_share]
        again = real[torch.rand(len(real), generator=generator, device=g).cpu() < self.fake_share]
        if len(pick) == 0 or len(real) == 0:
            return x
        src = real[torch.randint(len(real), (len(pick),), generator=generator, device=g).cpu()]
        kind = SIM_KINDS[int(torch.randint(len(SIM_KINDS), (1,), generator=generator, device=g))]
        lo, hi = self.amplitude
        alpha = (lo + (hi - lo) * torch.rand(len(pick), 1, 1, 1, generator=generator, device=g)) / 255
        weights = draw_decoder(generator, kind)
        mine_pick, mine_again = batch.is_mine(pick), batch.is_mine(again)
        if not (bool(mine_pick.any()) or bool(mine_again.any())):
            return x
        src = src[mine_pick]
        xs = x[batch.local(src).to(x.device)] if take is None or batch.whole else take(batch.rows[src])
        sim = xs
        if len(src):
            xs = xs.float() / 255
            residual = apply_decoder(torch.nn.functional.avg_pool2d(xs, 2), weights, kind)
            a = alpha[mine_pick].to(x.device)
            sim = (xs + a * residual).clamp(0, 1).mul(255).add(0.5).to(torch.uint8)
        rows = torch.cat([batch.local(pick[mine_pick]), batch.local(again[mine_again])])
        out = torch.cat([sim, x[batch.local(again[mine_again]).to(x.device)]]).permute(0, 2, 3, 1).cpu().numpy()
        done = torch.from_numpy(jpeg_roundtrip(out, self.quality)).to(x.device).permute(0, 3, 1, 2)
        x = x.clone()
        x[rows.to(x.device)] = done
        return x


@dataclass(frozen=True)
class RobustAugment:
    """CNNDetection-style training degradations: random JPEG re-compression and Gaussian blur.

    Each image is JPEG-compressed with probability `jpeg_p` at a quality drawn uniformly from
    `jpeg_quality`, and blurred with probability `blur_p` with a sigma drawn from `blur_sigma`.
    Draws are made for the whole batch and sliced to a rank's rows (`n_global`, `mine`), as for the flips.
    """

    # Defaults: stronger shares cost clean accuracy for little more robustness (docs/guide/generalization.md).
    jpeg_p: float = 0.3
    jpeg_quality: tuple[int, int] = (30, 95)
    blur_p: float = 0.1
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    simulation: ArtefactSimulation | None = None  # `--augment simulate`: robust + artefact simulation

    def jpeg(
        self, x: torch.Tensor, generator: torch.Generator, n_global: int | None = None, mine: slice = slice(None)
    ) -> torch.Tensor:
        """(N, 3, H, W) uint8 batch -> the same with a random subset JPEG round-tripped on the CPU."""
        n = x.shape[0] if n_global is None else n_global
        pick = (torch.rand(n, generator=generator, device=generator.device) < self.jpeg_p)[mine]
        lo, hi = self.jpeg_quality
        q = torch.randint(lo, hi + 1, (n,), generator=generator, device=generator.device)[mine]
        idx = torch.nonzero(pick).flatten().cpu()
        if len(idx) == 0:
            return x
        chosen = x[idx.to(x.device)].permute(0, 2, 3, 1).cpu().numpy()  # NHWC for Pillow
        done = torch.from_numpy(jpeg_roundtrip(chosen, q[pick].cpu().numpy())).to(x.device).permute(0, 3, 1, 2)
        x = x.clone()
        x[idx.to(x.device)] = done
        return x

    def blur(
        self, x: torch.Tensor, generator: torch.Generator, n_global: int | None = None, mine: slice = slice(None)
    ) -> torch.Tensor:
        """(N, 3, H, W) float batch -> a random subset blurred on the batch's device."""
        n = x.shape[0] if n_global is None else n_global
        picked = torch.rand(n, generator=generator, device=generator.device) < self.blur_p
        lo, hi = self.blur_sigma
        sigmas = lo + (hi - lo) * torch.rand(n, generator=generator, device=generator.device)
        pick, sigma = picked[mine], sigmas[mine]
        idx = torch.nonzero(pick).flatten().to(x.device)
        if len(idx) == 0:
            return x
        x = x.clone()
        x[idx] = gaussian_blur(x[idx], sigma[pick].to(x.device), float(sigmas[picked].max()))
        return x


@dataclass(frozen=True)
class Batch:
    """One global training batch as a rank sees it: the training-set rows of the whole batch (CPU int64),
    their labels, and which of them are this rank's (every `size`-th, from `rank`)."""

    rows: torch.Tensor
    labels: torch.Tensor
    rank: int = 0
    size: int = 1

    @property
    def mine(self) -> slice:
        return slice(self.rank, None, self.size)

    @property
    def whole(self) -> bool:
        return self.size == 1

    def is_mine(self, positions: torch.Tensor) -> torch.Tensor:
        return positions % self.size == self.rank

    def local(self, positions: torch.Tensor) -> torch.Tensor:
        """Positions in the global batch -> positions in this rank's share (for positions that are mine)."""
        return positions // self.size


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One shuffled epoch as global batches of training-set rows; the last, smaller batch is kept unless it
    would hold one image (BatchNorm cannot train on a batch of one; that image is seen next epoch)."""
    order = torch.randperm(n, generator=generator, device=generator.device).cpu()
    return [order[s : s + batch_size] for s in range(0, n, batch_size) if min(batch_size, n - s) >= 2]


def train_batches(
    images: torch.Tensor | Any,
    labels: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    augment: bool = True,
    robust: RobustAugment | None = None,
    rank: int = 0,
    size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled epoch of (float images, float labels) for rank `rank` of `size` training processes.

    `images` is the training set as a uint8 (N, 3, H, W) tensor on the device, or a placement from
    `realfake.data.placement` (device-resident, streamed from the memory map, or this rank's shard). Each
    global batch of `batch_size` is split across the ranks, rank r taking rows r, r + size, ...: together the
    ranks see exactly the batches one process would, with the same augmentation draws.

    With `robust`, a random share of each batch is JPEG re-compressed (on the CPU, before the cast) and
    blurred (on the device, after it), so the model cannot lean on compression or sharpness alone; with its
    `simulation`, some FAKE slots first become simulated decoder outputs of REAL images (ArtefactSimulation).
    """
    from realfake.data.placement import as_placement

    source = as_placement(images) if isinstance(images, torch.Tensor) else images
    cpu_labels = labels.cpu()
    batches = epoch_batches(len(cpu_labels), batch_size, generator)
    mine = slice(rank, None, size)
    source.start_epoch([b[mine] for b in batches])
    for rows in batches:
        batch = Batch(rows, cpu_labels[rows], rank, size)
        xb = source.next_batch()
        y = labels[rows[mine].to(labels.device)]
        if robust is not None and robust.simulation is not None:
            xb = robust.simulation.apply(xb, batch, generator, source.take)
        n = len(rows)
        if robust is not None:
            xb = robust.jpeg(xb, generator, n, mine)
        x = to_float(xb)
        if robust is not None:
            x = robust.blur(x, generator, n, mine)
        if augment:
            x = random_flips(x, generator, n, mine)
        yield x, y.float()
    source.end_epoch()


