"""The model registry: a name maps to a builder, so new models plug in without touching the trainer; and the
one door for weights files.

Every model takes (N, 3, 32, 32) float images in [0, 1] and returns one logit per image
(p_fake = sigmoid(logit)); any input normalisation happens inside the model.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from realfake.config import RunConfig, validated
from realfake.errors import RealfakeError, one_line


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


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The one door for weights files: safetensors, or a PyTorch .pt/.pth read with weights_only=True (tensors
    and plain containers only, never arbitrary objects). Any failure is one line naming the file."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
    except Exception as e:  # noqa: BLE001 - any loader failure is the user's file, reported in one line
        reason = f"cannot read weights file {path}, so the model cannot load ({e})"
        raise RealfakeError(reason.splitlines()[0][:300]) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RealfakeError(f"weights file {path} does not hold a state dict")
    if (bad := first_non_finite(state)) is not None:
        raise RealfakeError(f"weights file {path} holds NaN or infinite values (in {bad}), so every p_fake it gave "
                            f"would be NaN: restore it from a copy, or retrain")
    return state


def first_non_finite(state: dict[str, torch.Tensor]) -> str | None:
    """The first floating-point tensor holding a NaN or an infinity: one such weight makes every logit NaN."""
    return next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, what: str) -> None:
    """model.load_state_dict, strict, with a mismatch reported in one line naming the file."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise RealfakeError(f"weights file {path} does not fit {what}: {one_line(e)}") from None


def load_weights(name: str, path: str | Path) -> nn.Module:
    """Model `name` with every weight from `path` (a run's model.safetensors): what a Detector runs."""
    with torch.random.fork_rng(devices=[], device_type="cpu"):  # the random initialisation, overwritten next, must
        model = build(name, "none").model  # not use up the caller's random numbers
    load_state(model, read_state_dict(path), path, f"the {name} model")
    return model
