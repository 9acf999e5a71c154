"""PROTOTYPE, not product code: `fast` with a space-to-depth stem, judged at home and on ganC.

Question (issue 11, `fast` training >= 25x the reference): a third of `fast`'s training step is spent on the
stem's full-resolution 16x32x32 map (its BatchNorm and ReLU, forward and backward, and the 16->32 stride-2
convolution's backward into it). A space-to-depth stem (PixelUnshuffle(2): each 2x2 block of pixels becomes
12 channels at 16x16, nothing thrown away) followed by one 3x3 convolution to 32 channels does the first
stage's work without that map: it is a 6x6 stride-2 convolution on the image, with every pixel's phase in its
own channels, where a generator's 2-pixel up-sampling pattern shows. The stride-2 3x3 stem tried at the start
(README) lost accuracy because it saw each pixel through only some of its taps; this one loses nothing.

Also `nostembn`: the full-resolution stem kept, without its BatchNorm (a biased convolution, then ReLU).

Bare training step (batch 128, bf16, 2-core AMX Xeon, 16 rounds in turn in one process): `s2d` 1.23x version 2's
speed (faster in 15 of 16), `nostembn` 1.11x (16 of 16); `s2d` with 48 channels at 16x16 gave nothing (0.998x).
Full stand-in, 3 epochs of the recipe, seed 42, bf16, one run at a time (results
`generalization-fast-stem-{s2d,nostembn}-seed42-2026-11-29-xeon-amx.json`), against version 2 at the same seed:

| variant | home | ganC balanced | fakes caught | ROC AUC |
|---|---|---|---|---|
| version 2 (the recipe) | 99.72% | 98.38% | 97.45% | 0.9990 |
| `s2d` | 99.74% | **87.20%** | 75.10% | 0.9903 |
| `nostembn` | 99.58% | 97.12% | 95.25% | 0.9976 |

Neither was taken: the space-to-depth stem is as good at home and loses 11 points on the generator it never saw
(the full-resolution nonlinear stem is what carries `fast` there), and dropping the stem's BatchNorm loses 1.3
points on ganC (below all three seeds of version 2) for a 1.11x step.

Run (from the repository root, about 2 minutes a run on a 2-core AMX Xeon):

    python -m research.fast_stem s2d|nostembn|base --epochs 3 [--seed N] [--out-dir DIR]
"""

from __future__ import annotations

import sys

import benchmarks.generalization as generalization
from torch import nn

import realfake.models.fast as fast

_init = fast.FastNet.__init__


def s2d_init(self: fast.FastNet, widths: tuple[int, int, int, int] = fast.WIDTHS, version: int | None = None) -> None:
    """FastNet with the stem and the first stride-2 convolution replaced by PixelUnshuffle(2) + 3x3 conv."""
    _init(self, widths, version)
    _, c1, c2, c3 = widths
    self.stem = nn.Sequential(nn.PixelUnshuffle(2), fast.conv_bn(12, c1))
    self.stages = nn.Sequential(fast.Residual(c1), fast.conv_bn(c1, c2, 2), fast.Residual(c2), fast.conv_bn(c2, c3, 2))


def nostembn_init(self: fast.FastNet, widths: tuple[int, int, int, int] = fast.WIDTHS,
                  version: int | None = None) -> None:
    """FastNet whose full-resolution stem has no BatchNorm (a biased convolution, then ReLU)."""
    _init(self, widths, version)
    self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1), nn.ReLU())


VARIANTS = {"s2d": (s2d_init, "space-to-depth stem"), "nostembn": (nostembn_init, "stem without BatchNorm"),
            "base": (_init, "version 2 as it is")}


def main(argv: list[str]) -> None:
    name, rest = argv[0], argv[1:]
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    init, note = VARIANTS[name]
    fast.FastNet.__init__ = init  # type: ignore[method-assign]
    generalization.METHODS[name] = {"overrides": {"model": "fast"}, "limit": None, "epochs_x": 1, "note": note}
    generalization.main(rest + ["--methods", name])


if __name__ == "__main__":
    main(sys.argv[1:])
