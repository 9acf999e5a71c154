"""Models by name: `build(name, weights)`, the registry in `registry.py`, one module per model.

Every model takes (N, 3, 32, 32) float images in [0, 1] and returns one logit per image
(p_fake = sigmoid(logit)); any input normalisation happens inside the model. Importing this package imports
every model module, which registers its builder.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

from realfake.models import fast, seed_resnet50  # noqa: F401  (registers the models)
from realfake.models.registry import (
    Built,
    apply_recipe,
    available,
    build,
    load_state,
    load_weights,
    read_state_dict,
    register,
)

__all__ = ["Built", "apply_recipe", "available", "build", "load_state", "load_weights", "read_state_dict", "register"]
