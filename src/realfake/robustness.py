"""How the verdict holds up when images are re-compressed, blurred, resampled or noisy.

Every degradation runs once, deterministically (noise is seeded), with Pillow/NumPy/SciPy on the 32x32
uint8 images the model sees. Each is applied to all test images, to REAL only and to FAKE only: a model
that has learnt "JPEG artefacts mean REAL" (a format shortcut) collapses when only one class is degraded.
Applying a degradation to one class changes nothing about the other class's images, so one model pass
per degradation serves all three settings.
"""

from __future__ import annotations

__side__ = "training"  # see tests/test_layers.py

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from realfake.calibration import Calibration
from realfake.contract import CLASS_NAMES
from realfake.data.batches import jpeg_roundtrip
from realfake.errors import RealfakeError
from realfake.metrics import condition_metrics
from realfake.rundir import RunDir

APPLIED_TO = ("all", "REAL", "FAKE")


@dataclass(frozen=True)
class Degradation:
    """One named image degradation with its strength."""

    kind: str  # jpeg | blur | resample | noise
    param: float

    @property
    def name(self) -> str:
        return f"{self.kind}{self.param:g}"

    def describe(self) -> str:
        return {
            "jpeg": f"JPEG quality {self.param:g}",
            "blur": f"Gaussian blur sigma {self.param:g} px",
            "resample": f"down x{self.param:g} and back up",
            "noise": f"Gaussian noise sigma {self.param:g}/255",
        }[self.kind]


DEGRADATIONS: tuple[Degradation, ...] = (
    *(Degradation("jpeg", q) for q in (95, 75, 50, 30)),
    *(Degradation("blur", s) for s in (0.5, 1, 2)),
    *(Degradation("resample", f) for f in (0.5, 0.25)),
    *(Degradation("noise", s) for s in (2, 5, 10)),
)


def _rng(seed: int, d: Degradation) -> np.random.Generator:
    """A stream per (seed, degradation): noise at sigma 2 and sigma 5 never share their draws."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(d.name.encode())])


def degrade(images: np.ndarray, d: Degradation, seed: int = 0) -> np.ndarray:
    """(N, H, W, 3) uint8 images under degradation `d`; the same inputs and seed give identical bytes."""
    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise RealfakeError(f"degrade needs (N, H, W, 3) uint8 images, got {x.dtype} {x.shape}")
    if d.kind == "jpeg":
        return jpeg_roundtrip(x, int(d.param))
    if d.kind == "blur":
        out = gaussian_filter(x.astype(np.float32), sigma=(0, d.param, d.param, 0), mode="reflect", truncate=4.0)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if d.kind == "resample":
        h, w = x.shape[1:3]
        small = (max(1, round(w * d.param)), max(1, round(h * d.param)))
        out = np.empty_like(x)
        for i, img in enumerate(x):
            down = Image.fromarray(img).resize(small, Image.Resampling.BICUBIC)
            out[i] = np.asarray(down.resize((w, h), Image.Resampling.BICUBIC))
        return out
    if d.kind == "noise":
        noise = _rng(seed, d).normal(0.0, d.param, size=x.shape)
        return np.clip(np.rint(x.astype(np.float64) + noise), 0, 255).astype(np.uint8)
    raise RealfakeError(f"unknown degradation {d.kind!r}")


def apply_to(clean: np.ndarray, degraded: np.ndarray, labels: np.ndarray, applied_to: str) -> np.ndarray:
    """Rows (images or their logits) from `degraded` for the chosen class ('all', 'REAL', 'FAKE'), else clean."""
    if applied_to == "all":
        return degraded
    if applied_to not in CLASS_NAMES:
        raise RealfakeError(f"applied_to must be one of {APPLIED_TO}, got {applied_to!r}")
    mask = np.asarray(labels) == CLASS_NAMES.index(applied_to)
    return np.where(mask.reshape((-1,) + (1,) * (np.ndim(clean) - 1)), degraded, clean)


LogitsFn = Callable[[np.ndarray], np.ndarray]


def sweep(
    logits_fn: LogitsFn,
    images: np.ndarray,
    labels: np.ndarray,
    cal: Calibration,
    sources: list[str | None] | None = None,
    seed: int = 0,
    degradations: tuple[Degradation, ...] = DEGRADATIONS,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per condition: clean, then every degradation applied to all, to REAL only, to FAKE only."""
    images = np.asarray(images)
    clean = np.asarray(logits_fn(images), dtype=np.float64)
    rows = [{"condition": "clean", "degradation": "none", "param": None, "applied_to": "all",
             **condition_metrics(labels, clean, cal, sources)}]
    for d in degradations:
        if progress is not None:
            progress(d.describe())
        degraded = np.asarray(logits_fn(degrade(images, d, seed)), dtype=np.float64)
        for target in APPLIED_TO:
            logits = apply_to(clean, degraded, labels, target)
            name = d.name if target == "all" else f"{d.name}/{target}-only"
            rows.append({"condition": name, "degradation": d.kind, "param": d.param, "applied_to": target,
                         **condition_metrics(labels, logits, cal, sources)})
    return rows


def run_robustness(
    run_dir: str | Path, data: str | Path | None = None, *, device: str = "auto", seed: int = 0,
    progress: bool = True, log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The sweep on a run's test split (or on all of `data`); writes robustness.json and redraws the report.

    With `data`, the table goes to the run's evaluations/<data>/robustness.json instead.
    """
    from realfake import report
    from realfake.evaluation import evaluation_inputs, log_to_stderr

    log = log or log_to_stderr
    run = RunDir(run_dir)
    det, ds, idx, out = evaluation_inputs(run.path, data, device=device, progress=progress, log=log)
    cal = det.calibration
    images = np.asarray(ds.images[idx])
    labels = ds.labels[idx]
    sources = [ds.sources[i] for i in idx]
    rows = sweep(det.predict_logits, images, labels, cal, sources, seed,
                 progress=(lambda m: log(f"robustness: {m}")) if progress else None)
    result = {
        "data": ds.source_name,
        "split": "test" if data is None else "all",
        "n": int(len(labels)),
        "seed": int(seed),
        **{k: v for k, v in cal.to_info().items() if k in ("temperature", "threshold", "tta")},
        "conditions": rows,
    }
    out.path.mkdir(parents=True, exist_ok=True)
    log(f"wrote {out.write_json(RunDir.ROBUSTNESS, result)}")
    if run.has(RunDir.METRICS):
        report.build(run.path)
    return result


def table_text(result: dict[str, Any]) -> str:
    """The sweep as a fixed-width text table, for the terminal."""
    def f(v: Any) -> str:
        return "   n/a" if v is None else f"{v:6.4f}"

    lines = [f"{'condition':<26} {'acc':>6} {'auc':>6} {'ece':>6} {'accREAL':>7} {'accFAKE':>7}"]
    for r in result["conditions"]:
        lines.append(f"{r['condition']:<26} {f(r['accuracy'])} {f(r['roc_auc'])} {f(r['ece'])} "
                     f"{f(r['accuracy_real']):>7} {f(r['accuracy_fake']):>7}")
    return "\n".join(lines)
