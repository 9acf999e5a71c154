"""The model registry: a name maps to a builder, so new models plug in without touching the trainer.

Every model takes (N, 3, 32, 32) float images in [0, 1] and returns one logit per image
(p_fake = sigmoid(logit)); any input normalisation happens inside the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from realfake.errors import RealfakeError


@dataclass
class Built:
    """A freshly built model and a note on where its starting weights came from (saved in the run)."""

    model: nn.Module
    weights_used: str


Builder = Callable[[str], Built]  # weights spec ("auto" | "imagenet" | "none" | path) -> Built
_REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        _REGISTRY[name] = fn
        return fn

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def build(name: str, weights: str = "none") -> Built:
    if name not in _REGISTRY:
        raise RealfakeError(f"unknown model {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name](weights)


# Importing the modules registers their models.
from realfake.models import seed_resnet50  # noqa: E402,F401
