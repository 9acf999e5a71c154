"""The run config: one validated object travels through a run and is saved in it as config.yaml.

Defaults are the seed notebook's choices, so a run with no options reproduces it.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from realfake.calibration import parse_band, parse_policy
from realfake.contract import PRECISIONS, TTA_MODES, check_protocol
from realfake.errors import RealfakeError, one_line

MAX_LR = 10.0  # Adam steps are lr-sized: far above 1 training only diverges, near 1e38 float32 overflows outright
SEED_MAX = 2**32 - 1  # numpy's legacy seeding takes 0..2**32-1; torch.manual_seed fails beyond 2**64 - 1


class RunConfig(BaseModel):
    """Everything that decides what a training run does. Unknown keys are refused (typos fail early), and so
    are non-finite numbers (`lr: .inf`, `data_budget_mb: .nan`): config.yaml is read back from run folders."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)

    data: str | None = Field(None, description="folder or .zip; None means the bundled sample")
    protocol: str = Field("seed", description="seed | official | holdout:SOURCE (train without SOURCE, test on it)")
    model: str = "seed-resnet50"
    weights: str = Field("auto", description="auto | imagenet | none | path to a weights file")
    epochs: int = Field(10, ge=1)
    patience: int = Field(3, ge=1, description="early stopping patience, epochs without val-loss progress")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0, le=MAX_LR)
    lr_factor: float = Field(0.2, gt=0, lt=1, description="ReduceLROnPlateau factor")
    lr_patience: int = Field(2, ge=0, description="ReduceLROnPlateau patience")
    min_lr: float = Field(1e-6, ge=0)
    schedule: Literal["plateau", "onecycle"] = Field(
        "plateau", description="plateau = ReduceLROnPlateau per epoch; onecycle = warm-up then linear decay per step"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="BCE targets become y*(1-e) + e/2")
    seed: int = Field(42, ge=0, le=SEED_MAX, description="seeds torch and NumPy; 0..2**32-1")
    device: str = "auto"
    precision: Literal[PRECISIONS] = Field(  # type: ignore[valid-type]  # named once, in contract.py
        "auto", description="auto = bf16 autocast where the CPU (AMX, AVX-512 BF16) or GPU has it natively, "
        "else fp32 (fp16 on a GPU without bf16) | fp32 | bf16 (on any CPU; slow without native support)",
    )
    limit: int | None = Field(None, ge=10, description="stratified subset of this many images")
    out: str | None = None
    threshold: float = Field(0.5, gt=0, lt=1, description="the threshold when threshold_policy is 'fixed'")
    threshold_policy: str = Field(
        "balanced",
        description="how the threshold is chosen on validation: balanced | fpr:RATE | real:RATE | fixed:P | fixed",
    )
    uncertain: str | None = Field(None, description="LOW:HIGH band of calibrated p_fake labelled 'uncertain'")
    ood_level: float | None = Field(
        0.96, gt=0.5, lt=1, description="'uncertain' when an image is less typical of its class than this share of "
        "validation images of that class (see calibration.Typicality); None: no out-of-distribution score",
    )
    augment: Literal["flips", "robust", "simulate"] = Field(
        "flips", description="robust = flips + random JPEG and blur; simulate = robust + artefact simulation "
        "(REAL images through random up-sampling decoders, as extra FAKEs)",
    )
    aug_jpeg_p: float = Field(0.3, ge=0, le=1, description="robust: share of images JPEG re-compressed")
    aug_jpeg_quality: tuple[int, int] = Field((30, 95), description="robust: JPEG quality range (inclusive)")
    aug_blur_p: float = Field(0.1, ge=0, le=1, description="robust: share of images blurred")
    aug_blur_sigma: tuple[float, float] = Field((0.1, 1.5), description="robust: blur sigma range, pixels")
    aug_sim_share: float = Field(0.25, ge=0, le=1, description="simulate: share of FAKE slots made by simulation")
    extra_fakes: str | None = Field(
        None, description="folder or zip of FAKE images only (e.g. `realfake zoo sample`), mixed into the training "
        "split alone; validation and test stay the data's own (checked when training starts, not when a run's "
        "config.yaml is read back). `zoo` (or `builtin`): sampled from the generator zoo shipped in the package; "
        "a folder of trained generators: sampled from those (realfake.zoo.extras)",
    )
    extra_fakes_share: float = Field(
        0.5, gt=0, le=1, description="with extra_fakes: share of the training split's FAKE images taken by extra "
        "fakes (as many of the data's own training fakes are left out, so the classes stay balanced)",
    )
    tta: Literal[TTA_MODES] = Field(  # type: ignore[valid-type]  # the modes named once, in contract.py
        "none", description="flip = average the logits of image and mirror"
    )
    eval_batch_size: int = Field(1024, ge=1)
    data_placement: Literal["auto", "device", "stream"] = Field(
        "auto", description="device = the training images held on the training device; stream = read batch by "
        "batch from the memory-mapped cache, prefetched; auto = device when they fit (see data_budget_mb)",
    )
    data_budget_mb: float | None = Field(
        None, gt=0, description="memory the training images may take on the device under data_placement auto "
        "(MiB; default: half of what is free there)",
    )
    sync_batchnorm: bool = Field(False, description="under torchrun, BatchNorm statistics over the global batch "
                                 "(SyncBatchNorm; GPUs only)")
    workers: int | None = Field(None, ge=1, description="processes that decode images; None = all cores")

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "mps") and not (v == "cuda" or v.startswith("cuda:")):
            raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")
        return v

    @field_validator("protocol")
    @classmethod
    def _known_protocol(cls, v: str) -> str:
        try:
            return check_protocol(v)
        except RealfakeError as e:
            raise ValueError(str(e)) from None

    @field_validator("threshold_policy")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        if v.strip().lower() == "fixed":
            return "fixed"
        try:
            return str(parse_policy(v))
        except RealfakeError as e:
            raise ValueError(str(e)) from None

    @field_validator("uncertain")
    @classmethod
    def _known_band(cls, v: str | None) -> str | None:
        try:
            band = parse_band(v)
        except RealfakeError as e:
            raise ValueError(str(e)) from None
        return None if band is None else f"{band[0]:g}:{band[1]:g}"

    @field_validator("aug_jpeg_quality", "aug_blur_sigma")
    @classmethod
    def _range(cls, v: tuple[float, float], info: Any) -> tuple[float, float]:
        lo, hi = v
        top = 100 if info.field_name == "aug_jpeg_quality" else 10
        if not (0 < lo <= hi <= top):
            raise ValueError(f"must be LOW, HIGH with 0 < LOW <= HIGH <= {top}")
        return v

    @property
    def policy(self) -> str:
        """The threshold policy with a bare 'fixed' resolved to this config's `threshold`."""
        return f"fixed:{self.threshold:g}" if self.threshold_policy == "fixed" else self.threshold_policy

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
        raise RealfakeError(f"config file {p} is not valid YAML: {one_line(e)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise RealfakeError(f"config file {p} must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}
