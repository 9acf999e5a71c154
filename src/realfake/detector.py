"""A trained detector, loaded from a run directory, that answers "is this image fake?".

Preprocessing is `realfake.data.images` (the trainer's own), so a prediction sees exactly what training saw.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from realfake.config import CLASS_NAMES, RunConfig, load_yaml, validated
from realfake.data.images import BadImage, from_any
from realfake.device import select_device
from realfake.errors import RealfakeError
from realfake.evaluate import sigmoid
from realfake.fit import predict_logits
from realfake.models import build


@dataclass
class Prediction:
    """One verdict. `error` is set (and p_fake/label are None) when the input could not be read."""

    source: str
    p_fake: float | None
    label: str | None
    threshold: float
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["error"] is None:
            del d["error"]
        return d


class Detector:
    """Load once, predict many: `Detector.load("runs/x").predict("photo.jpg")`."""

    def __init__(self, model: torch.nn.Module, threshold: float, device: torch.device, info: dict[str, Any]):
        self.model = model.to(device).eval()
        self.threshold = float(threshold)
        self.device = device
        self.info = info

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto") -> Detector:
        run_dir = Path(run_dir)
        weights = run_dir / "model.safetensors"
        if not (run_dir / "config.yaml").is_file() or not weights.is_file():
            raise RealfakeError(f"{run_dir} is not a trained run (needs config.yaml and model.safetensors)")
        cfg = validated(RunConfig, load_yaml(run_dir / "config.yaml"))
        info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
        model = build(cfg.model, "none").model
        try:
            model.load_state_dict(load_file(str(weights)))
        except Exception as e:  # noqa: BLE001 - a corrupt or foreign file, reported in one line
            raise RealfakeError(f"cannot load {weights}: {e}".splitlines()[0][:300]) from None
        info.setdefault("model", cfg.model)
        return cls(model, info.get("threshold", cfg.threshold), select_device(device), info)

    def predict_proba(self, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """p_fake for (N, 32, 32, 3) uint8 images already in model form."""
        return sigmoid(predict_logits(self.model, images, self.device, batch_size))

    def label_for(self, p_fake: float, threshold: float | None = None) -> str:
        return CLASS_NAMES[int(p_fake >= (self.threshold if threshold is None else threshold))]

    def predict(self, x: Any, threshold: float | None = None) -> Prediction | list[Prediction]:
        """A path, PIL image, array or bytes gives one Prediction; a list gives a list, bad items included."""
        if isinstance(x, list | tuple):
            return self.predict_many(x, threshold)
        return self.predict_many([x], threshold)[0]

    def predict_many(self, xs: Sequence[Any], threshold: float | None = None) -> list[Prediction]:
        t = self.threshold if threshold is None else threshold
        arrays: list[np.ndarray] = []
        slots: list[int] = []
        results: list[Prediction | None] = []
        for x in xs:
            name = str(x) if isinstance(x, str | Path) else type(x).__name__
            try:
                arrays.append(from_any(Path(x).read_bytes() if isinstance(x, str | Path) else x))
                slots.append(len(results))
                results.append(None)
            except (BadImage, OSError) as e:
                results.append(Prediction(name, None, None, t, error=str(e)))
        if arrays:
            p = self.predict_proba(np.stack(arrays))
            for slot, pf in zip(slots, p, strict=True):
                x = xs[slot]
                name = str(x) if isinstance(x, str | Path) else type(x).__name__
                results[slot] = Prediction(name, round(float(pf), 6), self.label_for(pf, t), t)
        return [r for r in results if r is not None]
