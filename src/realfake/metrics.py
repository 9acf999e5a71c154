"""Every figure realfake reports, as pure functions of (labels, scores): FAKE is the positive class.

Accuracy to average precision come from scikit-learn; ECE, Brier and the reliability bins are written out
here because scikit-learn has no binned calibration error. Verdicts come from `realfake.calibration` (the one
place that turns p into a label); figures are rounded by one rule, `rounded`, so a metrics.json, a report
and a robustness table never disagree in the sixth decimal.
"""

from __future__ import annotations

__side__ = "shared"  # see tests/test_layers.py

import math
from typing import Any

import numpy as np
from sklearn import metrics as skm

from realfake.calibration import UNCERTAIN, Calibration, apply_temperature, in_band, is_fake, paired
from realfake.contract import CLASS_NAMES
from realfake.errors import RealfakeError

ECE_BINS = 15
# The labels a user can get, from "fake" to "real": the order every label-share figure is given in.
VERDICTS: tuple[str, str, str] = (CLASS_NAMES[1], UNCERTAIN, CLASS_NAMES[0])

# How each metrics.json figure is named for people, in the order reports show them: one list for the HTML
# report and the model card alike.
METRIC_LABELS: dict[str, str] = {
    "accuracy": "Accuracy",
    "precision": "Precision (FAKE)",
    "recall": "Recall (FAKE)",
    "f1": "F1 (FAKE)",
    "roc_auc": "ROC AUC",
    "average_precision": "Average precision",
    "n": "Test images (n)",
    "threshold": "Decision threshold on p(FAKE)",
    "threshold_policy": "Threshold policy (chosen on validation)",
    "temperature": "Temperature T (p = sigmoid(logit / T), fitted on validation)",
    "ece": "ECE, 15 equal-width bins of p(FAKE) (calibrated)",
    "ece_equal_mass": "ECE, 15 equal-mass bins (each holding the same number of images; calibrated)",
    "ece_uncalibrated": "ECE, 15 equal-width bins (before calibration)",
    "brier": "Brier score (calibrated)",
    "brier_uncalibrated": "Brier score (before calibration)",
    "tta": "Test-time augmentation",
}


def rounded(x: float | None) -> float | None:
    """The one rounding rule for reported figures: 6 decimals; NaN and None (undefined) become None."""
    return None if x is None or math.isnan(x) else round(float(x), 6)


def _both_classes(labels: np.ndarray) -> bool:
    return len(np.unique(labels)) == 2


def compute_metrics(labels: np.ndarray, p_fake: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """The metrics.json figures. ROC AUC and AP are null when the set holds only one class."""
    labels = np.asarray(labels).astype(int)
    p_fake = np.asarray(p_fake, dtype=np.float64)
    pred = is_fake(p_fake, threshold).astype(int)
    both = _both_classes(labels)
    prec, rec, f1, support = skm.precision_recall_fscore_support(
        labels, pred, labels=[0, 1], zero_division=0
    )
    return {
        "accuracy": rounded(skm.accuracy_score(labels, pred)),
        "precision": rounded(prec[1]),
        "recall": rounded(rec[1]),
        "f1": rounded(f1[1]),
        "roc_auc": rounded(skm.roc_auc_score(labels, p_fake)) if both else None,
        "average_precision": rounded(skm.average_precision_score(labels, p_fake)) if both else None,
        # rows = true class, columns = predicted class, in CLASS_NAMES order (REAL, FAKE)
        "confusion_matrix": skm.confusion_matrix(labels, pred, labels=[0, 1]).tolist(),
        "n": int(len(labels)),
        "threshold": float(threshold),
        "per_class": {
            name: {
                "precision": rounded(prec[i]),
                "recall": rounded(rec[i]),
                "f1": rounded(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(CLASS_NAMES)
        },
    }


# --- calibration quality -----------------------------------------------------------------------------------


def _bins(y: np.ndarray, p: np.ndarray, which: np.ndarray, n_bins: int) -> dict[str, list[Any]]:
    """Count, mean p_fake and fraction truly FAKE of each bin, given every image's bin (`which`)."""
    count = np.bincount(which, minlength=n_bins).astype(float)
    sum_p = np.bincount(which, weights=p, minlength=n_bins)
    sum_y = np.bincount(which, weights=y.astype(float), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p, frac_fake = sum_p / count, sum_y / count
    return {
        "count": count.tolist(),
        "mean_p": [None if math.isnan(v) else float(v) for v in mean_p],
        "frac_fake": [None if math.isnan(v) else float(v) for v in frac_fake],
    }


def reliability_bins(labels: np.ndarray, p_fake: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, list[float]]:
    """Equal-width bins over p_fake in [0, 1]: count, mean p_fake and fraction truly FAKE per bin.

    Binning p_fake (not max(p, 1-p)) keeps both classes' mistakes visible on one diagonal plot.
    """
    y, p = paired(labels, p_fake)
    which = np.clip((p * n_bins).astype(int), 0, n_bins - 1)  # p == 1.0 belongs to the last bin
    return {"edges": np.linspace(0, 1, n_bins + 1).tolist(), **_bins(y, p, which, n_bins)}


def equal_mass_bins(labels: np.ndarray, p_fake: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, list[float]]:
    """Bins by quantiles of p_fake, each holding the same number of images (`edges`: the lowest p of each bin,
    then the highest p of all).

    A good detector puts nearly every image in the two outer equal-width bins, so equal-width ECE rests on two
    bins and the curve between them on a handful of images; equal-mass bins spend the resolution where the
    images are. Images with the same p_fake always share a bin (ties are never split by their order), so a bin
    can hold more than its share, and empty bins are left out.
    """
    y, p = paired(labels, p_fake)
    if len(y) == 0:
        return {"edges": [], "count": [], "mean_p": [], "frac_fake": []}
    order = np.argsort(p, kind="stable")
    sorted_p = p[order]
    first = np.searchsorted(sorted_p, sorted_p, side="left")  # rank of the first image with the same p
    which = np.empty(len(p), dtype=np.intp)
    which[order] = first * n_bins // len(p)
    b = _bins(y, p, which, n_bins)
    used = [i for i, c in enumerate(b["count"]) if c]
    lows = [float(p[which == i].min()) for i in used]
    return {"edges": [*lows, float(sorted_p[-1])], **{k: [v[i] for i in used] for k, v in b.items()}}


def _ece_of(bins: dict[str, list[Any]], n: int) -> float:
    """The count-weighted gap |mean p - fraction FAKE| over the bins."""
    gaps = [c * abs(mp - fy) for c, mp, fy in zip(bins["count"], bins["mean_p"], bins["frac_fake"], strict=True) if c]
    return float(sum(gaps) / n)


def ece(labels: np.ndarray, p_fake: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error: the count-weighted gap |mean p - fraction FAKE| over equal-width bins."""
    y, p = paired(labels, p_fake)
    return _ece_of(reliability_bins(y, p, n_bins), len(y)) if len(y) else math.nan


def ece_equal_mass(labels: np.ndarray, p_fake: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error over equal-mass bins (`equal_mass_bins`), the adaptive ECE: less swayed by
    how the equal-width grid happens to cut a crowd of scores near 0 or 1."""
    y, p = paired(labels, p_fake)
    return _ece_of(equal_mass_bins(y, p, n_bins), len(y)) if len(y) else math.nan


def brier(labels: np.ndarray, p_fake: np.ndarray) -> float:
    """Mean squared error of p_fake against the 0/1 truth (lower is better; 0.25 is a coin)."""
    y, p = paired(labels, p_fake)
    return float(np.mean((p - y) ** 2)) if len(y) else math.nan


def label_shares(labels: np.ndarray, verdicts: list[str] | np.ndarray) -> dict[str, Any]:
    """Per true class (REAL, FAKE), how many images got each label a user sees (FAKE / uncertain / REAL), as counts
    and shares; `verdicts` come from `Calibration.labels`, the rule predict applies.

    Accuracy at the threshold counts an image labelled `uncertain` as REAL or FAKE by its p_fake, while the user
    was told "I don't know": these are the figures of what users actually get. A class without images has n 0
    and null shares.
    """
    y = np.asarray(labels).astype(int).ravel()
    v = np.asarray(verdicts, dtype=object).ravel()
    if len(y) != len(v):
        raise RealfakeError(f"{len(y)} labels but {len(v)} verdicts")
    out: dict[str, Any] = {}
    for i, name in enumerate(CLASS_NAMES):
        sel = y == i
        n = int(sel.sum())
        counts = {verdict: int((v[sel] == verdict).sum()) for verdict in VERDICTS}
        out[name] = {"n": n, "counts": counts,
                     "shares": {k: rounded(c / n) if n else None for k, c in counts.items()}}
    return out


def calibration_metrics(labels: np.ndarray, logits: np.ndarray, cal: Calibration) -> dict[str, Any]:
    """The labels users get per true class, ECE (equal-width and equal-mass) and Brier before and after
    temperature scaling, and the uncertainty band's effect."""
    y = np.asarray(labels).astype(int).ravel()
    raw, p = apply_temperature(logits), cal.p_fake(logits)
    ood = cal.ood_scores(logits)
    out: dict[str, Any] = {
        "labels": label_shares(y, cal.labels(p, ood)),
        "ece": rounded(ece(y, p)),
        "ece_equal_mass": rounded(ece_equal_mass(y, p)),
        "brier": rounded(brier(y, p)),
        "ece_uncalibrated": rounded(ece(y, raw)),
        "brier_uncalibrated": rounded(brier(y, raw)),
        "temperature": round(cal.temperature, 6),
        "threshold_policy": cal.threshold_policy,
    }
    if cal.tta != "none":
        out["tta"] = cal.tta
    if cal.uncertain_band is not None:
        inside = in_band(p, cal.uncertain_band)
        outside = ~inside
        right = cal.is_fake(p) == (y == 1)
        out["uncertain"] = {
            "band": list(cal.uncertain_band),
            "n_uncertain": int(inside.sum()),
            "fraction_uncertain": rounded(inside.mean()) if len(y) else None,
            "n_decided": int(outside.sum()),
            "accuracy_decided": rounded(right[outside].mean()) if outside.any() else None,
            "accuracy_all": rounded(right.mean()) if len(y) else None,
        }
    if ood is not None:
        out["ood"] = ood_metrics(y, p, cal, ood)
    return out


def ood_metrics(labels: np.ndarray, p_fake: np.ndarray, cal: Calibration, ood: np.ndarray) -> dict[str, Any]:
    """How many images "I don't know" caught: flagged out of distribution, per true class, and how many were
    still confidently wrong (a wrong REAL/FAKE label, not uncertain), the figure a user pays for."""
    y = np.asarray(labels).astype(int).ravel()
    flagged = cal.out_of_distribution(ood)
    unsure = cal.uncertain(p_fake, ood)
    wrong = (cal.is_fake(p_fake) != (y == 1)) & ~unsure

    def share(mask: np.ndarray, where: np.ndarray) -> float | None:
        return rounded(mask[where].mean()) if where.any() else None

    return {
        "level": cal.ood.level if cal.ood else None,
        "n_flagged": int(flagged.sum()),
        "fraction_flagged": share(flagged, np.ones_like(flagged)),
        "fraction_flagged_real": share(flagged, y == 0),
        "fraction_flagged_fake": share(flagged, y == 1),
        "fraction_uncertain": share(unsure, np.ones_like(unsure)),
        "confidently_wrong": share(wrong, np.ones_like(wrong)),
        "accuracy_decided": rounded((~wrong[~unsure]).mean()) if (~unsure).any() else None,
    }


# --- by source, and under degradations ----------------------------------------------------------------------


def _source_names(sources: list[str | None]) -> np.ndarray:
    return np.array([s if s is not None else "(none)" for s in sources], dtype=object)


def per_source_metrics(
    labels: np.ndarray, p_fake: np.ndarray, threshold: float, sources: list[str | None],
    uncertain: np.ndarray | None = None, verdicts: list[str] | None = None,
) -> dict[str, Any]:
    """compute_metrics for each source's images; for a one-class source, also its AUC against every image of
    the other class in the set (how separable this generator is from the real photos, say). With `uncertain`
    (the verdicts that were 'uncertain'), also each source's share of uncertain and of confidently wrong; with
    `verdicts` (`Calibration.labels`), each source's `label_shares`."""
    src = _source_names(sources)
    y = np.asarray(labels).astype(int)
    given = None if verdicts is None else np.asarray(verdicts, dtype=object)
    out: dict[str, Any] = {}
    for name in sorted(set(src.tolist())):
        sel = src == name
        m = compute_metrics(y[sel], p_fake[sel], threshold)
        m.pop("per_class", None)
        if uncertain is not None:
            wrong = is_fake(p_fake[sel], threshold) != (y[sel] == 1)
            m["fraction_uncertain"] = rounded(uncertain[sel].mean())
            m["confidently_wrong"] = rounded((wrong & ~uncertain[sel]).mean())
        if given is not None:
            m["labels"] = label_shares(y[sel], given[sel])
        classes = np.unique(y[sel])
        if len(classes) == 1:
            other = y != classes[0]
            if other.any():
                both = sel | other
                m["roc_auc_vs_other_class"] = compute_metrics(y[both], p_fake[both], threshold)["roc_auc"]
        m["classes"] = [CLASS_NAMES[int(c)] for c in classes]
        out[str(name)] = m
    return out


def condition_metrics(
    labels: np.ndarray, logits: np.ndarray, cal: Calibration, sources: list[str | None] | None = None
) -> dict[str, Any]:
    """One robustness row: accuracy (overall and per class), ROC AUC and ECE of the calibrated p_fake; per
    source if known."""
    y = np.asarray(labels).astype(int)
    p = cal.p_fake(logits)
    right = cal.is_fake(p) == (y == 1)
    out: dict[str, Any] = {
        "accuracy": rounded(right.mean()) if len(y) else None,
        "roc_auc": rounded(skm.roc_auc_score(y, p)) if _both_classes(y) else None,
        "ece": rounded(ece(y, p)),
    }
    for i, name in enumerate(CLASS_NAMES):
        sel = y == i
        out[f"accuracy_{name.lower()}"] = rounded(right[sel].mean()) if sel.any() else None
    if sources is not None and any(s is not None for s in sources):
        src = _source_names(sources)
        out["per_source"] = {
            str(s): {"n": int((src == s).sum()), "accuracy": rounded(right[src == s].mean())} for s in sorted(set(src))
        }
    return out
