"""The run config: one validated object travels through a run and is saved in it as config.yaml.

Defaults are the seed notebook's choices, so a run with no options reproduces it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from realfake.errors import RealfakeError

CLASS_NAMES: tuple[str, str] = ("REAL", "FAKE")  # label 0 = REAL, label 1 = FAKE (the positive class)
IMAGE_SIZE = 32  # CIFAKE's size; every image is normalised to it


class RunConfig(BaseModel):
    """Everything that decides what a training run does. Unknown keys are refused (typos fail early)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    data: str | None = Field(None, description="folder or .zip; None means the bundled sample")
    protocol: Literal["seed", "official"] = "seed"
    model: str = "seed-resnet50"
    weights: str = Field("auto", description="auto | imagenet | none | path to a weights file")
    epochs: int = Field(10, ge=1)
    patience: int = Field(3, ge=1, description="early stopping patience, epochs without val-loss progress")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_factor: float = Field(0.2, gt=0, lt=1, description="ReduceLROnPlateau factor")
    lr_patience: int = Field(2, ge=0, description="ReduceLROnPlateau patience")
    min_lr: float = Field(1e-6, ge=0)
    seed: int = 42
    device: str = "auto"
    limit: int | None = Field(None, ge=10, description="stratified subset of this many images")
    out: str | None = None
    threshold: float = Field(0.5, gt=0, lt=1)
    eval_batch_size: int = Field(1024, ge=1)
    workers: int | None = Field(None, ge=1, description="processes that decode images; None = all cores")

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "mps") and not (v == "cuda" or v.startswith("cuda:")):
            raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")
        return v

    @classmethod
    def from_sources(cls, config_file: str | Path | None = None, **overrides: Any) -> RunConfig:
        """Merge a YAML file and explicit overrides (None = not given), validating once."""
        values: dict[str, Any] = {}
        if config_file is not None:
            values.update(load_yaml(config_file))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return validated(cls, values)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), sort_keys=False)


def validated(cls: type[BaseModel], values: dict[str, Any]) -> Any:
    """Build a pydantic model, turning its ValidationError into one readable line."""
    try:
        return cls(**values)
    except ValidationError as e:
        parts = [f"{'.'.join(str(x) for x in err['loc']) or 'config'}: {err['msg']}" for err in e.errors()]
        raise RealfakeError("invalid config: " + "; ".join(parts)) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise RealfakeError(f"config file not found: {p}")
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise RealfakeError(f"config file {p} is not valid YAML: {e}".splitlines()[0]) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise RealfakeError(f"config file {p} must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}
