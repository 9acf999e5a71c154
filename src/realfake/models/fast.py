"""`fast`: a small residual conv net for 32x32 real-vs-fake, built to train in seconds per epoch on a CPU.

In the spirit of airbench (Keller Jordan's CIFAR-10 speed runs): BatchNorm + ReLU conv blocks (GELU until
version 2, see VERSION), a whole
recipe of its own (one-cycle LR, label smoothing, flip test-time augmentation), and the data
resident on the device with flips done on whole batches (realfake.fit does that for every model).

Why this shape: a GAN's fingerprints are high-frequency (checkerboard artefacts of transposed convolutions,
missing fine texture), so the stem keeps the full 32x32 resolution for one conv before anything downsamples;
ResNet50's stride-2 7x7 conv + max-pool throws that band away in its first two layers. After the stem the
net halves the resolution three times (16, 8, 4) while widening, with one residual conv at 16x16 and 8x8,
and pools globally by max and mean (an artefact anywhere in the image is evidence).

It costs about a tenth of ResNet50's arithmetic at 32x32 (torch.utils.flop_counter,
tests/benchmarks/test_bench_flops.py), and narrower widths, no 16x16 residual or a stride-2 stem each cost
accuracy (docs/guide/models.md).
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

from pathlib import Path
from typing import Any

import torch
from torch import nn

from realfake._kernels.state_dict import before_loading
from realfake.errors import RealfakeError
from realfake.models.registry import Built, load_state, read_state_dict, register

WIDTHS = (16, 32, 64, 128)  # stem (32x32), then stages at 16x16, 8x8, 4x4
# BatchNorm running statistics follow the last few batches (torch default 0.1 needs ~30 steps): a short run
# on a small data set has only a handful of steps, and stale statistics made its eval-mode output constant.
BN_MOMENTUM = 0.4

# Training defaults for this model (see realfake.models.Built.recipe); any option the user sets wins.
# Batch 128 rather than airbench's 1024: on a CPU a bigger batch buys no speed for a net this small, and a
# quick run on a few thousand images needs the steps (docs/performance.md#figures-behind-the-code).
# One-cycle + label smoothing 0.1 as in airbench.
# Two choices made for generators the model never saw (docs/guide/generalization.md; full stand-in, 3
# epochs, judged on the held-out ganC generator): the threshold is set by the REAL photos (at most 0.5% of
# validation REAL called FAKE; `real:0.005`, never stricter than `balanced`, which a weak model of a quick run
# needs), not halfway to this generator's fakes, since fakes are an open set; and training
# sees CNNDetection-style JPEG and blur degradations (`augment: robust`), so it leans less on one generator's
# exact pixels. Each raised ganC's balanced accuracy, and one epoch of the recipe lost much of it, so three
# epochs stay the advice (docs/guide/generalization.md, for version 1 and version 2).
RECIPE = {
    "epochs": 3,  # the advice above; `--epochs` (or a config's epochs) wins, as for every field here
    "batch_size": 128,
    "lr": 2e-3,
    "schedule": "onecycle",
    "label_smoothing": 0.1,
    "tta": "flip",
    "threshold_policy": "real:0.005",
    "augment": "robust",
}


class DenseGELU(nn.GELU):
    """Version 1's activation (see VERSION): nn.GELU, the same function and no parameters; in training it runs on
    the feature map viewed as the dense NHWC array that channels_last memory is.

    Why: PyTorch's CPU GELU, forward and backward, is slower on a channels_last (N, C, H, W) tensor than on the
    same memory read as contiguous (N, H, W, C), and the training step ran faster with this view
    (docs/performance.md, Speed: "`fast`'s GELU in training"). The values are GELU's, the layout is unchanged, and in
    eval mode it is plain GELU, so ONNX export sees one Gelu and prediction's fused copy (realfake.models.fused) treats
    it as the nn.GELU it is.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.dim() == 4:
            return nn.functional.gelu(x.permute(0, 2, 3, 1), approximate=self.approximate).permute(0, 3, 1, 2)
        return nn.functional.gelu(x, approximate=self.approximate)


# The activation, by the version of `fast`'s weights. Version 1 (every `fast` run before the fourth session of
# 2026-11-29) used GELU; version 2 uses ReLU, which did at least as well at home and on the held-out generator
# (docs/guide/generalization.md) and trains faster; viewing it as NHWC, as DenseGELU does, did not help ReLU
# (docs/performance.md#the-fast-model). A model records its version in its weights (the `version` buffer); weights
# without one are version 1 and load as GELU, so a run trained before the change keeps its logits.
VERSION = 2
ACTIVATIONS: dict[int, type[nn.Module]] = {1: DenseGELU, 2: nn.ReLU}


def take_the_weights_version(net: nn.Module, state: dict[str, Any], prefix: str, *args: Any) -> None:
    """Before weights load into a FastNet: it becomes the version they were trained as (no `version`: 1, GELU)."""
    key = prefix + "version"
    found = state.get(key)
    version = 1 if found is None else int(found)
    if version not in ACTIVATIONS:
        raise RuntimeError(f"fast model version {version}: this realfake knows versions "
                           f"{', '.join(map(str, ACTIVATIONS))} (weights from a newer realfake?)")
    if found is None:
        state[key] = torch.tensor(version)
    if version != int(net.version):
        for module in net.modules():
            for name, child in module.named_children():
                if isinstance(child, tuple(ACTIVATIONS.values())):
                    setattr(module, name, ACTIVATIONS[version]())


def conv_bn(c_in: int, c_out: int, stride: int = 1, version: int | None = None) -> nn.Sequential:
    """3x3 conv (no bias: BatchNorm has one) -> BatchNorm -> the version's activation (default: VERSION)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out, momentum=BN_MOMENTUM),
        ACTIVATIONS[VERSION if version is None else version](),
    )


class Residual(nn.Module):
    """x + f(x): one more conv at the same resolution, cheap to train through."""

    def __init__(self, c: int, version: int | None = None) -> None:
        super().__init__()
        self.f = conv_bn(c, c, version=version)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


class FastNet(nn.Module):
    """(N, 3, 32, 32) in [0, 1] -> (N,) logits. Normalisation is a fixed affine map inside the model."""

    # Images per forward pass when predicting on a CPU (realfake.infer.forward_batch): a larger batch asked for is
    # run in pieces of this size. This net does little arithmetic per byte of feature map, so once a batch's maps
    # no longer stay in cache it slows down (docs/performance.md, Speed: "`fast` predicts a large batch in
    # pieces"). ResNet50 does ten times the arithmetic
    # on maps of the same size, gains from larger batches, and sets none.
    cpu_forward_batch = 256
    # The activations prediction's copy computes inside the convolution before them (realfake.models.fused): both
    # versions'. Fusing ReLU pays here, unlike in seed-resnet50, because these maps are large for their
    # arithmetic (docs/performance.md#the-fast-model).
    fused_activations = (nn.GELU, nn.ReLU)

    def __init__(self, widths: tuple[int, int, int, int] = WIDTHS, version: int | None = None) -> None:
        super().__init__()
        c0, c1, c2, c3 = widths
        v = VERSION if version is None else version
        self.stem = conv_bn(3, c0, version=v)  # full resolution: keeps the high-frequency band
        self.stages = nn.Sequential(
            conv_bn(c0, c1, stride=2, version=v), Residual(c1, v),  # 16x16
            conv_bn(c1, c2, stride=2, version=v), Residual(c2, v),  # 8x8
            conv_bn(c2, c3, stride=2, version=v),  # 4x4
        )
        self.head = nn.Linear(2 * c3, 1)
        self.register_buffer("version", torch.tensor(v))
        before_loading(self, take_the_weights_version)

    def cam_layer(self) -> nn.Module:
        """Grad-CAM's layer (see realfake.explain): the 8x8 residual block, as seed-resnet50 uses an 8x8 map;
        the last stage is 4x4, too coarse to say where."""
        return self.stages[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem((x - 0.5) * 4.0))
        return self.head(self.pool(x)).squeeze(1)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Global max and mean per channel, side by side.

        In training they are taken over the map viewed as (N, H*W, C), the dense array channels_last memory is.
        Pooled over dims (2, 3), the gradient came back in NCHW order and the last BatchNorm's backward, reading
        it beside a channels_last input, was several times slower, and so was the step (docs/performance.md,
        Speed: "`fast`'s GELU in training"). The values are the same either way; eval mode keeps the plain form.
        """
        if self.training:
            v = x.permute(0, 2, 3, 1).flatten(1, 2)
            return torch.cat([v.amax(dim=1), v.mean(dim=1)], dim=1)
        return torch.cat([x.amax(dim=(2, 3)), x.mean(dim=(2, 3))], dim=1)


@register("fast")
def build(weights: str) -> Built:
    """A fresh FastNet (random initialisation; 'auto' means that too), or one loaded from a weights file."""
    model = FastNet()
    if weights in ("none", "auto"):
        return Built(model, "none (random initialisation)", dict(RECIPE))
    if weights == "imagenet":
        raise RealfakeError("the fast model has no ImageNet weights; use --weights none (the default) or a file")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise RealfakeError(f"--weights must be auto, none or a weights file; {weights!r} is none")
    load_state(model, read_state_dict(path), path, "the fast model")
    return Built(model, f"file {path}", dict(RECIPE))
