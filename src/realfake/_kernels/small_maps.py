"""Convolutions on tiny feature maps run as one matrix product: the same layer, a faster kernel.

Why: at CIFAKE's 32x32, ResNet50's last two stages work on 2x2 and 1x1 maps. There a convolution is a small
dense linear map, but oneDNN still runs it as a convolution, and its backward pass is slow at those shapes: on
CPUs measured, those layers were two thirds of seed-resnet50's backward pass and several times slower than the
same matrix product (docs/performance.md#small-map-kernels). So, on maps of at most `MAX_PIXELS` pixels, a
convolution here is written as the matrix it is: the input's pixels and channels in one row per image, times a
matrix built from the kernel's taps (each input pixel, output pixel pair takes the tap that joins them, or
zero); a 1x1 convolution without padding is a product per pixel on a map of any size. Everything else (bigger
maps, groups, dilation) is the ordinary convolution.

The parameters, the state dict and the results are those of the `nn.Conv2d` (up to the order of the sums), so
the notebook's architecture is untouched: `small_map_kernels(model)` swaps the class of a model's Conv2d
modules while `realfake.fit` trains and puts it back afterwards, so checkpoints, ONNX export and Grad-CAM see
the usual layers. Swapping a live module's class is outside nn.Module's public contract, so it is done only where
a probe swap gives nn.Conv2d's outputs and gradients (`small_maps_work`); elsewhere, and with REALFAKE_KERNELS=0,
the layers stay the nn.Conv2d they are (the public fallback). Prediction keeps the convolutions: which kernel
runs depends on the batch (MIN_BATCH), and a verdict must not depend on which images shared its batch (in bf16 the
two kernels' roundings moved a p_fake in its 4th decimal, and `predict --engine ray` batches differently from
local `predict`).
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import contextlib
import copy
import functools
from collections.abc import Iterator

import torch
from torch import nn

from realfake._kernels import enabled, turned_off

MAX_PIXELS = 4  # 2x2: the dense matrix has (pixels x in) x (pixels x out) entries; a 4x4 map made it too big
# Building the dense matrix costs (taps / batch) of the product itself, whatever the batch: from 32 images on it
# is paid back; a single image (a server's request) keeps the faster convolution
# (docs/performance.md#small-map-kernels).
MIN_BATCH = 32


@functools.lru_cache(maxsize=64)
def _taps(
    h: int, w: int, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int,
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Which kernel tap joins each (input pixel, output pixel) pair: a one-hot (pairs x used taps), a zero row
    where none does, and the taps used at all (on a 1x1 map only a 3x3 kernel's centre is: the other eight
    are never read, so never copied).

    The dense matrix is the one-hot times those taps, a matrix product whose backward is one too (a gather's
    backward, a scatter-add, was slower than the convolution it replaces).
    """
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    onehot = torch.zeros(h * w, max(ho, 0) * max(wo, 0), kh * kw)
    for oy in range(ho):
        for ox in range(wo):
            for ty in range(kh):
                for tx in range(kw):
                    iy, ix = oy * sh - ph + ty, ox * sw - pw + tx
                    if 0 <= iy < h and 0 <= ix < w:
                        onehot[iy * w + ix, oy * wo + ox, ty * kw + tx] = 1.0
    onehot = onehot.view(-1, kh * kw)
    used = torch.nonzero(onehot.sum(0)).flatten()
    return onehot[:, used].contiguous(), used, ho, wo


class SmallMapConv2d(nn.Conv2d):
    """An nn.Conv2d whose forward is a matrix product where that is the faster kernel (see the module doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros" or x.dim() != 4
                or isinstance(self.padding, str)):  # 'same' / 'valid': left to the convolution
            return super().forward(x)
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if (kh, kw, ph, pw) == (1, 1, 0, 0):
            return self._per_pixel(x[:, :, ::sh, ::sw] if (sh, sw) != (1, 1) else x)
        if h * w > MAX_PIXELS or n < MIN_BATCH:
            return super().forward(x)
        onehot, used, ho, wo = _taps(h, w, kh, kw, sh, sw, ph, pw)
        if ho < 1 or wo < 1:
            return super().forward(x)
        taps = self.weight.flatten(2)[:, :, used.to(x.device)].permute(2, 1, 0).reshape(len(used), -1)  # (taps, in*out)
        dense = (onehot.to(device=x.device, dtype=taps.dtype) @ taps).view(h * w, ho * wo, c, self.out_channels)
        dense = dense.permute(0, 2, 1, 3).reshape(h * w * c, ho * wo * self.out_channels)
        rows = x.permute(0, 2, 3, 1).reshape(n, h * w * c)
        y = rows @ dense if self.bias is None else torch.addmm(self.bias.repeat(ho * wo), rows, dense)
        return y.view(n, ho, wo, self.out_channels).permute(0, 3, 1, 2)

    def _per_pixel(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)
        weight = self.weight.view(self.out_channels, c).t()
        y = rows @ weight if self.bias is None else torch.addmm(self.bias, rows, weight)
        return y.view(n, h, w, self.out_channels).permute(0, 3, 1, 2)


def small_maps_work() -> bool:
    """Whether training may swap its convolutions' class (`small_map_kernels`): switched on, and a probe swap gives
    nn.Conv2d's outputs and gradients on the paths the layer takes (checked once per process)."""
    if not enabled("small_maps"):
        return False
    why = _probe()
    if why is not None:
        turned_off("small_maps", why)
    return why is None


@functools.cache
def _probe() -> str | None:
    try:
        with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
            torch.random.default_generator.manual_seed(0)  # the CPU's alone: the one fork_rng puts back
            pairs = [(nn.Conv2d(8, 12, k, padding=k // 2), torch.randn(MIN_BATCH, 8, 2, 2)) for k in (1, 3)]
        for ref, x in pairs:  # with gradients and in fp32, whatever the caller's context
            probe = copy.deepcopy(ref)
            probe.__class__ = SmallMapConv2d
            if type(probe) is not SmallMapConv2d:
                return "a Conv2d's class cannot be swapped"
            with torch.enable_grad(), torch.autocast("cpu", enabled=False):
                xr, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
                yr, yp = ref(xr), probe(xp)
                yr.sum().backward()
                yp.sum().backward()
            for got, want in ((yp, yr), (xp.grad, xr.grad), (probe.weight.grad, ref.weight.grad),
                              (probe.bias.grad, ref.bias.grad)):
                if got is None or want is None or not torch.allclose(got, want, atol=1e-4, rtol=1e-4):
                    return "the products' values or gradients differ from nn.Conv2d's"
        return None
    except (RuntimeError, TypeError, AttributeError) as e:
        return f"the swapped layer fails ({type(e).__name__})"


@contextlib.contextmanager
def small_map_kernels(model: nn.Module) -> Iterator[int]:
    """Within the block, the model's plain Conv2d layers compute as SmallMapConv2d; yields how many (0 where
    `small_maps_work` is not: they compute as nn.Conv2d)."""
    swapped = [m for m in model.modules() if type(m) is nn.Conv2d] if small_maps_work() else []
    for m in swapped:
        m.__class__ = SmallMapConv2d
    try:
        yield len(swapped)
    finally:
        for m in swapped:
            m.__class__ = nn.Conv2d
