"""PROTOTYPE, not product code: does an NPR input (Tan et al., CVPR 2024) help `fast` on a zoo family it never saw?

`gen_sim.py` found no lift from NPR on ganC alone (one generator). Issue 28 asks for methods to be chosen on the
worst held-out family of the zoo instead, so this registers a `fast-npr` model (fast's network and recipe behind a
neighbouring-pixel-relation front: the image minus its 2x nearest re-up-sampled subsample) through realfake's
public model registry and runs `benchmarks.generalization --lofo` with it as one more method (`fast-npr`),
alongside any of the benchmark's own methods.

    python -m research.lofo_npr --lofo --methods fast-recipe,fast-npr --seeds 42,7,1 [benchmark options]

Run folders it writes name the model `fast-npr`, which only a process that imported this module can load.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import generalization
from realfake.models.fast import RECIPE, FastNet
from realfake.models.registry import Built, register


class NPRFast(nn.Module):
    """fast's network fed the neighbouring pixel relation, centred on 0.5 as its input normalisation expects."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = FastNet()

    @property
    def head(self) -> nn.Module:  # adapt fine-tunes `head`; a property, so its weights are stored once
        return self.inner.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x[:, :, ::2, ::2], scale_factor=2, mode="nearest")
        return self.inner((x - up) * 2 + 0.5)

    def cam_layer(self) -> nn.Module:
        return self.inner.cam_layer()


@register("fast-npr")
def build(weights: str) -> Built:
    if weights not in ("none", "auto"):
        raise SystemExit("fast-npr (research) trains from random initialisation only")
    return Built(NPRFast(), "none (random initialisation)", dict(RECIPE))


generalization.METHODS["fast-npr"] = {
    "overrides": {"model": "fast-npr"}, "limit": None, "epochs_x": 1,
    "note": "fast's recipe behind an NPR input (research/lofo_npr.py)",
}

if __name__ == "__main__":
    print(generalization.main(sys.argv[1:]))
