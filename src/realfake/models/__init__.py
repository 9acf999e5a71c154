"""The model registry: a name maps to a builder, so new models plug in without touching the trainer.

Every model takes (N, 3, 32, 32) float images in [0, 1] and returns one logit per image
(p_fake = sigmoid(logit)); any input normalisation happens inside the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from realfake.config import RunConfig, validated
from realfake.errors import RealfakeError


@dataclass
class Built:
    """A freshly built model, a note on where its starting weights came from (saved in the run), and its recipe.

    `recipe` holds the model's preferred training defaults as RunConfig field values (e.g. batch_size, lr,
    schedule, label_smoothing, tta). They replace RunConfig's defaults only for fields the user did not set
    (see apply_recipe), so `--lr 3e-4` always wins, and a model with an empty recipe (seed-resnet50) trains
    exactly with RunConfig's defaults, which are the notebook's.
    """

    model: nn.Module
    weights_used: str
    recipe: dict[str, Any] = field(default_factory=dict)


Builder = Callable[[str], Built]  # weights spec ("auto" | "imagenet" | "none" | path) -> Built
_REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        _REGISTRY[name] = fn
        return fn

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def apply_recipe(cfg: RunConfig, recipe: dict[str, Any]) -> RunConfig:
    """A copy of `cfg` with `recipe` filling every field the user left unset (pydantic's model_fields_set).

    The result has every recipe field set, so the run's saved config.yaml replays it exactly.
    """
    values = cfg.model_dump(exclude_unset=True)
    values.update({k: v for k, v in recipe.items() if k not in cfg.model_fields_set})
    return validated(RunConfig, values)


def build(name: str, weights: str = "none") -> Built:
    if name not in _REGISTRY:
        raise RealfakeError(f"unknown model {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name](weights)


# Importing the modules registers their models.
from realfake.models import fast, seed_resnet50  # noqa: E402,F401
