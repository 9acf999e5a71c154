"""The verdict: logit -> calibrated p_fake -> REAL / FAKE / uncertain, defined here and nowhere else.

A network's sigmoid is usually over-confident. One scalar temperature T, fitted on the validation split
(p_fake = sigmoid(logit / T)), fixes most of that without changing the ranking (AUC is unchanged). The
decision threshold is then chosen on the same validation split, on the calibrated p, by a named policy,
and stored in run.json. Every consumer (evaluate, predict, serve, metrics, plots) turns logits into p with
`Calibration.p_fake` and p into a verdict with `is_fake` / `label_of`, so they cannot drift apart.
How well calibrated p is (ECE, Brier) is a figure, and lives in `realfake.metrics`.

"I don't know" (`Typicality`): a detector meets generators it never saw, and their fakes land between the
classes it learned, where the threshold turns them into confident REALs. So the run also stores, per class,
the quantiles of its validation logits; an image's `ood` score is how far out it lies in the class it is
labelled (0.97: more extreme than 97% of validation images of that class, in the direction of the other class),
and above `level` (0.96) it is labelled uncertain whatever p_fake says. It flagged more of an unseen generator's
fakes than feature-space scores (Mahalanobis, kNN) did (docs/guide/generalization.md).
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import math
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, Strict, StrictStr, ValidationError, field_validator
from scipy.special import expit, log_expit, logit

from realfake.contract import CLASS_NAMES, TTA_MODES
from realfake.errors import RealfakeError

UNCERTAIN = "uncertain"
T_MIN, T_MAX = 0.05, 20.0  # beyond these a "temperature" means the logits carry no usable scale at all
POLICY_HELP = "balanced | fpr:RATE (e.g. fpr:0.01) | real:RATE (e.g. real:0.005) | fixed:P (e.g. fixed:0.5)"


def paired(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels as ints and scores as float64, flattened; a length mismatch is a one-line error."""
    y = np.asarray(labels).astype(int).ravel()
    q = np.asarray(scores, dtype=np.float64).ravel()
    if len(y) != len(q):
        raise RealfakeError(f"{len(y)} labels but {len(q)} scores")
    return y, q


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """p from logits in float64, without overflow warnings at extreme logits."""
    return expit(np.asarray(logits, dtype=np.float64))


# --- temperature scaling -----------------------------------------------------------------------------------


def _nll(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    z = logits / t
    return float(-np.mean(labels * log_expit(z) + (1 - labels) * log_expit(-z)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises the log-loss of sigmoid(logit / T) on (validation) data.

    One class only, or too few images, gives T = 1 (no evidence to rescale on).
    """
    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if len(z) != len(y):
        raise RealfakeError(f"{len(y)} labels but {len(z)} logits")
    if len(z) < 2 or len(np.unique(y)) < 2 or not np.all(np.isfinite(z)):
        return 1.0
    # Imported here: only fitting needs it, and it is a quarter of a second of every `realfake predict`'s start.
    from scipy.optimize import minimize_scalar

    # Searching log T makes the problem well scaled for both over- and under-confident models.
    res = minimize_scalar(
        lambda s: _nll(z, y, math.exp(s)), bounds=(math.log(T_MIN), math.log(T_MAX)), method="bounded",
        options={"xatol": 1e-6},
    )
    return float(math.exp(res.x))


def apply_temperature(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Calibrated p_fake = sigmoid(logit / T)."""
    return sigmoid(np.asarray(logits, dtype=np.float64) / float(temperature))


# --- the decision threshold --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThresholdPolicy:
    """How the threshold is chosen on validation data: `balanced`, `fpr` (a target rate), `real` (the lower
    of the two) or `fixed`."""

    kind: str
    value: float | None = None

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"


def parse_policy(text: str) -> ThresholdPolicy:
    """'balanced', 'fpr:0.01' or 'fixed:0.5' to a ThresholdPolicy; anything else is a one-line error."""
    kind, _, arg = str(text).strip().lower().partition(":")
    if kind in ("balanced", "balanced-accuracy") and not arg:
        return ThresholdPolicy("balanced")
    if kind in ("fpr", "real", "fixed") and arg:
        try:
            value = float(arg)
        except ValueError:
            value = math.nan
        if kind in ("fpr", "real") and 0 <= value < 1 or kind == "fixed" and 0 < value < 1:
            return ThresholdPolicy(kind, value)
    raise RealfakeError(f"threshold policy must be {POLICY_HELP}; got {text!r}")


def balanced_accuracy_threshold(labels: np.ndarray, p_fake: np.ndarray) -> float:
    """The threshold maximising (TPR + TNR) / 2; ties go to the candidate nearest 0.5.

    Candidates are midpoints between consecutive distinct scores (plus the two ends), so the chosen cut
    never sits exactly on a validation score.
    """
    y, p = paired(labels, p_fake)
    if len(np.unique(y)) < 2:
        return 0.5
    s = np.unique(p)
    cands = np.concatenate([[s[0] / 2], (s[:-1] + s[1:]) / 2, [(s[-1] + 1) / 2]])
    pos, neg = p[y == 1], p[y == 0]
    tpr = 1 - np.searchsorted(np.sort(pos), cands, side="left") / len(pos)  # share of FAKE with p >= t
    tnr = np.searchsorted(np.sort(neg), cands, side="left") / len(neg)  # share of REAL with p < t
    bacc = (tpr + tnr) / 2
    best = np.flatnonzero(np.isclose(bacc, bacc.max(), rtol=0, atol=1e-12))
    return float(cands[best[np.argmin(np.abs(cands[best] - 0.5))]])


def fpr_threshold(labels: np.ndarray, p_fake: np.ndarray, target: float) -> float:
    """The lowest threshold whose false-positive rate on REAL (p >= t) is at most `target`."""
    y, p = paired(labels, p_fake)
    real = np.sort(p[y == 0])[::-1]
    if len(real) == 0:
        return 0.5
    allowed = int(math.floor(target * len(real) + 1e-9))  # false positives we may keep
    if allowed >= len(real):
        return float(real[-1])  # every REAL may be flagged: the lowest REAL score itself
    # Above the (allowed+1)-th highest REAL score, so at most `allowed` REAL images reach it; halfway to the
    # next higher score of either class, so the validation verdicts are those of the lowest such threshold
    # while a logit recomputed a rounding error higher does not cross it.
    cut = real[allowed]
    above = p[p > cut]
    return float((cut + above.min()) / 2) if len(above) else float(min(np.nextafter(cut, np.inf), 1.0))


def inside_unit(p: float) -> float:
    """`p` moved inside (0, 1): a cut at exactly 0 or 1 (every validation score rounded there) labels all or none."""
    return min(max(p, float(np.nextafter(0.0, 1.0))), float(np.nextafter(1.0, 0.0)))


def choose_threshold(labels: np.ndarray, p_fake: np.ndarray, policy: str | ThresholdPolicy) -> float:
    """The decision threshold on calibrated p_fake, chosen on validation data by `policy`."""
    pol = policy if isinstance(policy, ThresholdPolicy) else parse_policy(policy)
    if pol.kind == "fixed":
        return float(pol.value)  # type: ignore[arg-type]
    if pol.kind == "fpr":
        return fpr_threshold(labels, p_fake, float(pol.value))  # type: ignore[arg-type]
    if pol.kind == "real":
        # Anchored on the REAL photos: as low as `fpr:RATE` allows (fakes are an open set, and an unseen
        # generator's land between the classes), but never stricter than `balanced` (a weak model, whose REAL
        # scores spread wide, would otherwise let most fakes through).
        rate = float(pol.value)  # type: ignore[arg-type]
        return min(fpr_threshold(labels, p_fake, rate), balanced_accuracy_threshold(labels, p_fake))
    return balanced_accuracy_threshold(labels, p_fake)


# --- the uncertainty band ----------------------------------------------------------------------------------


def parse_band(text: str | None) -> tuple[float, float] | None:
    """'0.35:0.65' to (0.35, 0.65); None or '' or 'none' means no band."""
    if text is None or str(text).strip().lower() in ("", "none", "off"):
        return None
    lo_s, sep, hi_s = str(text).partition(":")
    try:
        lo, hi = float(lo_s), float(hi_s)
    except ValueError:
        lo = hi = math.nan
    if not sep or not band_ok(lo, hi):
        raise RealfakeError(f"uncertainty band must be LOW:HIGH with {BAND_RULE} (e.g. 0.35:0.65); got {text!r}")
    return lo, hi


BAND_RULE = "0 <= LOW < HIGH <= 1"


def band_ok(lo: float, hi: float) -> bool:
    """The band rule, for a typed option and a stored band alike (NaN fails it)."""
    return 0 <= lo < hi <= 1


def in_band(p_fake: np.ndarray, band: tuple[float, float] | None) -> np.ndarray:
    """True where calibrated p_fake lies inside the band (both ends included)."""
    p = np.asarray(p_fake, dtype=np.float64)
    if band is None:
        return np.zeros(p.shape, dtype=bool)
    return (p >= band[0]) & (p <= band[1])


def is_fake(p_fake: np.ndarray | float, threshold: float) -> np.ndarray:
    """The decision itself: FAKE where calibrated p_fake reaches the threshold (p >= t), else REAL."""
    return np.asarray(p_fake, dtype=np.float64) >= float(threshold)


def label_of(p_fake: float, threshold: float, band: tuple[float, float] | None = None) -> str:
    """REAL / FAKE by the threshold, or 'uncertain' inside the band."""
    if band is not None and band[0] <= p_fake <= band[1]:
        return UNCERTAIN
    return CLASS_NAMES[int(is_fake(p_fake, threshold))]


_LABELS = np.array([*CLASS_NAMES, UNCERTAIN], dtype=object)  # index 0 REAL, 1 FAKE, 2 uncertain


def labels_of(p_fake: np.ndarray, threshold: float, band: tuple[float, float] | None = None) -> list[str]:
    return [label_of(float(p), threshold, band) for p in np.asarray(p_fake, dtype=np.float64).ravel()]


# --- "I don't know": how typical an image is of the class it is labelled ----------------------------------------

# The score above which an input is out of distribution. Not 0.95: the tail of a class's logits is wider on new
# images than on the validation split it was estimated from, so the nominal 5% flags more than 5% of new
# images, and 0.96 is what brought that back near 5% on the full stand-in (docs/performance.md#figures-behind-the-code).
OOD_LEVEL = 0.96
OOD_POINTS = 101  # quantiles stored per class (every percentile)
QUANTILE_MIN_WIDTH = 1e-6  # a segment between two equal quantiles is a step, not a division by zero


def quantile_cdf(z: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The share of a class's validation logits below z, read off its stored quantiles q (piecewise linear).

    Written as a sum of clamped ramps, one per segment, so that the ONNX graph computes the very same
    function with elementwise ops (see `realfake.export`).
    """
    z = np.asarray(z, dtype=np.float64).reshape(-1, 1)
    q = np.asarray(q, dtype=np.float64)
    width = np.maximum(q[1:] - q[:-1], QUANTILE_MIN_WIDTH)
    return np.clip((z - q[:-1]) / width, 0.0, 1.0).sum(axis=1) / (len(q) - 1)


@dataclass(frozen=True)
class Typicality:
    """Per class, OOD_POINTS quantiles of the validation logits, and the level above which an input is OOD."""

    real: tuple[float, ...]
    fake: tuple[float, ...]
    level: float = OOD_LEVEL

    @classmethod
    def fit(cls, logits: np.ndarray, labels: np.ndarray, level: float = OOD_LEVEL) -> Typicality | None:
        """From validation logits and labels; None without at least two images of each class."""
        y, z = paired(labels, logits)
        if min(int((y == 0).sum()), int((y == 1).sum())) < 2 or not np.all(np.isfinite(z)):
            return None
        grid = np.linspace(0, 1, OOD_POINTS)
        return cls(tuple(float(v) for v in np.quantile(z[y == 0], grid)),
                   tuple(float(v) for v in np.quantile(z[y == 1], grid)), float(level))

    def scores(self, logits: np.ndarray, fake: np.ndarray) -> np.ndarray:
        """OOD score in [0, 1] of each logit, in the class it is labelled (`fake`: labelled FAKE)."""
        z = np.asarray(logits, dtype=np.float64).ravel()
        return np.where(np.asarray(fake).ravel(), 1.0 - quantile_cdf(z, np.array(self.fake)),
                        quantile_cdf(z, np.array(self.real)))

    def to_info(self) -> dict[str, Any]:
        return {"level": self.level, "real": [round(v, 6) for v in self.real], "fake": [round(v, 6) for v in self.fake]}

    @classmethod
    def from_info(cls, d: Any, source: str = "run.json") -> Typicality | None:
        """From run.json's `ood` (None when the run has none; malformed is a one-line error)."""
        return Calibration.from_info({"ood": d}, source=source).ood


# --- what a run stores, read back: one schema for run.json and an ONNX file's metadata -----------------------

# A number as JSON writes it: not a string, not a bool, and (allow_inf_nan=False below) finite. Values read back
# are data from anyone, and a NaN or out-of-range setting gives no error, only wrong verdicts.
Number = Annotated[float, Strict()]
_STORED = ConfigDict(extra="ignore", allow_inf_nan=False, frozen=True)


class StoredOod(BaseModel):
    """run.json's (or the metadata's) `ood`: the writer stores exactly OOD_POINTS quantiles per class."""

    model_config = _STORED
    level: Number = Field(gt=0, lt=1)
    real: list[Number]
    fake: list[Number]

    @field_validator("real", "fake", mode="before")
    @classmethod
    def _length(cls, v: Any) -> Any:
        """Checked before pydantic looks at the items: a list of a million quantiles fails at once."""
        if not isinstance(v, (list, tuple)) or len(v) != OOD_POINTS:
            raise ValueError("length")
        return v

    @field_validator("real", "fake")
    @classmethod
    def _sorted(cls, v: list[float]) -> list[float]:
        if any(b < a for a, b in zip(v[:-1], v[1:], strict=True)):
            raise ValueError("order")
        return v


class StoredCalibration(BaseModel):
    """The settings a verdict depends on, as stored; other keys (provenance of many shapes) pass unchecked."""

    model_config = _STORED
    temperature: Number | None = Field(None, gt=0)
    logit_offset: Number | None = None
    threshold: Number | None = Field(None, gt=0, lt=1)
    threshold_policy: StrictStr | None = None
    uncertain_band: tuple[Number, Number] | None = None
    tta: Literal[TTA_MODES] | None = None  # type: ignore[valid-type]  # named once, in contract.py
    ood: StoredOod | None = None
    class_names: tuple[StrictStr, StrictStr] | None = None
    quantization: dict[str, Any] | None = None  # an int8 ONNX file's (see realfake.quantize)

    @field_validator("threshold_policy")
    @classmethod
    def _policy(cls, v: str | None) -> str | None:
        try:
            if v is not None:
                parse_policy(v)
        except RealfakeError:  # not a ValueError, so pydantic would let it through with no file named
            raise ValueError("policy") from None
        return v

    @field_validator("uncertain_band")
    @classmethod
    def _band(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not band_ok(*v):
            raise ValueError("band")
        return v

    @field_validator("class_names")
    @classmethod
    def _classes(cls, v: tuple[str, str] | None) -> tuple[str, str] | None:
        if v is not None and v != CLASS_NAMES:
            raise ValueError("classes")
        return v


_QUANTILES = f"must be {OOD_POINTS} finite numbers in ascending order"
_STORED_RULES = {  # what each stored field must be, said once (the models above check it)
    "temperature": "must be a finite number above 0",
    "logit_offset": "must be a finite number",
    "threshold": "must be a number between 0 and 1",
    "threshold_policy": f"must be {POLICY_HELP}",
    "uncertain_band": f"must be [LOW, HIGH] with {BAND_RULE}, or null",
    "tta": f"must be one of {', '.join(TTA_MODES)}",
    "ood": "must be an object with level, real and fake, or null",
    "ood.level": "must be a number between 0 and 1",
    "ood.real": _QUANTILES,
    "ood.fake": _QUANTILES,
    "class_names": f"must be {list(CLASS_NAMES)}",
    "quantization": "must be an object",
}


def check_stored(values: dict[str, Any], source: str, todo: str = "restore it from a copy, or retrain",
                 key: str = "") -> StoredCalibration:
    """`values` (run.json, or an ONNX file's metadata parsed) checked against the one schema of stored settings.

    A bad value is one RealfakeError: `source`, the field (after `key`, e.g. "metadata "), what it must be, what
    it is, and `todo`; so no caller ever sees a traceback or computes a verdict from it.
    """
    if not isinstance(values, dict):
        raise RealfakeError(f"{source} must hold an object of settings, not {type(values).__name__}: {todo}")
    try:
        return StoredCalibration.model_validate(values)
    except ValidationError as e:
        loc = [str(x) for x in e.errors()[0]["loc"]]  # e.g. ["threshold"], ["ood", "real", "7"]
    field = ".".join(loc[:2]) if ".".join(loc[:2]) in _STORED_RULES else loc[0]
    where = "the 'ood' entry is malformed: " if field.startswith("ood") else ""
    raise RealfakeError(
        f"{source}: {where}{key}{field} {_STORED_RULES[field]}, got {_shown(values, field, loc)}: {todo}"
    ) from None


def _shown(values: dict[str, Any], field: str, loc: list[str]) -> str:
    """The offending value, short: a long list by its length, an item of a list by its position."""
    v: Any = values
    for part in field.split("."):
        if not isinstance(v, dict) or part not in v:
            return "nothing"
        v = v[part]
    item = loc[field.count(".") + 1] if len(loc) > field.count(".") + 1 else None
    if item is not None and item.isdigit() and isinstance(v, (list, tuple)) and int(item) < len(v):
        return f"{v[int(item)]!r}"[:60] + f" at position {item}"
    if isinstance(v, (list, tuple)) and len(v) > 4:
        return f"a list of {len(v)} values"
    return repr(v)[:80]


# --- what a run stores, and the figures evaluation reports ---------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """The trust settings a run stores in run.json and every consumer applies."""

    temperature: float = 1.0
    threshold: float = 0.5
    threshold_policy: str = "fixed:0.5"
    uncertain_band: tuple[float, float] | None = None
    tta: str = "none"
    ood: Typicality | None = None

    @classmethod
    def from_info(cls, info: dict[str, Any], default_threshold: float = 0.5, source: str = "run.json") -> Calibration:
        """From run.json or an ONNX file's metadata, checked by `check_stored` (a bad value is one line naming
        `source`); runs made before calibration existed get T = 1 and their stored threshold.

        Runs and files from before p_fake was kept a probability stored their threshold as a logit offset
        (p = sigmoid((logit - offset) / T), FAKE from 0.5): read back as the same cut on p = sigmoid(logit / T),
        so every verdict stays as it was and p_fake becomes the calibrated probability.
        """
        s = check_stored(info, source)
        temperature = 1.0 if s.temperature is None else s.temperature
        threshold = default_threshold if s.threshold is None else s.threshold
        if s.logit_offset:
            cut = s.logit_offset / temperature + float(logit(threshold))
            threshold = inside_unit(float(expit(cut)))
        ood = s.ood
        return cls(
            temperature=temperature,
            threshold=threshold,
            threshold_policy=s.threshold_policy or f"fixed:{threshold:g}",
            uncertain_band=s.uncertain_band,
            tta=s.tta or "none",
            ood=Typicality(tuple(ood.real), tuple(ood.fake), ood.level) if ood else None,
        )

    def to_info(self) -> dict[str, Any]:
        return {
            "temperature": round(self.temperature, 6),
            "threshold": self.threshold,
            "threshold_policy": self.threshold_policy,
            "uncertain_band": list(self.uncertain_band) if self.uncertain_band else None,
            "tta": self.tta,
            "ood": self.ood.to_info() if self.ood else None,
        }

    def p_fake(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated p_fake for raw logits: a probability, with the decision threshold applied to it, not in it."""
        return apply_temperature(logits, self.temperature)

    def log_odds(self, logits: np.ndarray) -> np.ndarray:
        """The calibrated log-odds (p_fake = sigmoid of it), which keep apart images whose p_fake rounds to 0 or 1."""
        return np.asarray(logits, dtype=np.float64) / float(self.temperature)

    def reasons(self, p_fake: np.ndarray, ood: np.ndarray | None = None) -> list[str | None]:
        """Why each verdict is 'uncertain': 'ood' (atypical of the class it would be labelled), 'band' (inside the
        uncertain band of p_fake), or None where the verdict is REAL or FAKE."""
        p = np.asarray(p_fake, dtype=np.float64).ravel()
        band = in_band(p, self.uncertain_band)
        far = self.out_of_distribution(None if ood is None else np.asarray(ood, dtype=np.float64).ravel())
        far = np.broadcast_to(far, p.shape)
        return np.where(far, "ood", np.where(band, "band", None)).tolist()

    def with_threshold(self, threshold: float | None) -> Calibration:
        """The same calibration with another decision threshold (a user override); None keeps this one."""
        return self if threshold is None else replace(self, threshold=float(threshold))

    def is_fake(self, p_fake: np.ndarray | float) -> np.ndarray:
        return is_fake(p_fake, self.threshold)

    def ood_scores(self, logits: np.ndarray) -> np.ndarray | None:
        """Each raw logit's OOD score in the class this threshold labels it (None: the run stores none)."""
        if self.ood is None:
            return None
        return self.ood.scores(logits, self.is_fake(self.p_fake(logits)))

    def out_of_distribution(self, ood: np.ndarray | float | None) -> np.ndarray:
        """True where an OOD score is above the stored level."""
        if self.ood is None or ood is None:
            return np.zeros(np.shape(ood) if ood is not None else (), dtype=bool)
        return np.asarray(ood, dtype=np.float64) > self.ood.level

    def label(self, p_fake: float, ood: float | None = None) -> str:
        """REAL / FAKE by the threshold, or 'uncertain' inside the stored band or out of distribution."""
        if ood is not None and bool(self.out_of_distribution(ood)):
            return UNCERTAIN
        return label_of(float(p_fake), self.threshold, self.uncertain_band)

    def labels(self, p_fake: np.ndarray, ood: np.ndarray | None = None) -> list[str]:
        """`label` of each element, in whole-array operations (a batch predictor labels thousands a second)."""
        p = np.asarray(p_fake, dtype=np.float64).ravel()
        uncertain = self.uncertain(p, None if ood is None else np.asarray(ood, dtype=np.float64).ravel())
        return _LABELS[np.where(uncertain, 2, self.is_fake(p).astype(np.intp))].tolist()

    def uncertain(self, p_fake: np.ndarray, ood: np.ndarray | None = None) -> np.ndarray:
        """True where the verdict is 'uncertain' (the band, or out of distribution)."""
        mask = in_band(p_fake, self.uncertain_band)
        return mask | self.out_of_distribution(ood) if ood is not None else mask


def calibrate(
    val_logits: np.ndarray, val_labels: np.ndarray, policy: str, band: str | None = None, tta: str = "none",
    ood_level: float | None = OOD_LEVEL,
) -> Calibration:
    """Fit T on validation logits, pick the threshold on the calibrated validation p_fake, and fit the OOD
    score's quantiles there too (`ood_level` None: no OOD score).

    p_fake stays the calibrated probability and the threshold is a cut on it, which may lie far from 0.5: with
    `real:0.005` a run flags an image whose p_fake is only 0.001 if fewer than 0.5% of real validation photos
    score that high. (Folding the cut into p as an offset, so that 0.5 was the line, made p no probability:
    on the home test split every image scored 0.5-0.99 was a real photo.)
    """
    pol = parse_policy(policy)
    t = fit_temperature(val_logits, val_labels)
    threshold = inside_unit(choose_threshold(val_labels, apply_temperature(val_logits, t), pol))
    ood = Typicality.fit(val_logits, val_labels, ood_level) if ood_level is not None else None
    return Calibration(t, threshold, str(pol), parse_band(band), tta, ood)
