"""Test-set metrics, with FAKE as the positive class. Every figure comes from scikit-learn."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import expit
from sklearn import metrics as skm

from realfake.config import CLASS_NAMES

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
    "ece": "ECE, 15 bins (calibrated)",
    "ece_uncalibrated": "ECE, 15 bins (before calibration)",
    "brier": "Brier score (calibrated)",
    "brier_uncalibrated": "Brier score (before calibration)",
    "tta": "Test-time augmentation",
}

def _finite_or_none(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 6)


def compute_metrics(labels: np.ndarray, p_fake: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """The metrics.json figures. ROC AUC and AP are null when the set holds only one class."""
    labels = np.asarray(labels).astype(int)
    p_fake = np.asarray(p_fake, dtype=np.float64)
    pred = (p_fake >= threshold).astype(int)
    both = len(np.unique(labels)) == 2
    prec, rec, f1, support = skm.precision_recall_fscore_support(
        labels, pred, labels=[0, 1], zero_division=0
    )
    return {
        "accuracy": round(float(skm.accuracy_score(labels, pred)), 6),
        "precision": round(float(prec[1]), 6),
        "recall": round(float(rec[1]), 6),
        "f1": round(float(f1[1]), 6),
        "roc_auc": _finite_or_none(skm.roc_auc_score(labels, p_fake)) if both else None,
        "average_precision": _finite_or_none(skm.average_precision_score(labels, p_fake)) if both else None,
        # rows = true class, columns = predicted class, in CLASS_NAMES order (REAL, FAKE)
        "confusion_matrix": skm.confusion_matrix(labels, pred, labels=[0, 1]).tolist(),
        "n": int(len(labels)),
        "threshold": float(threshold),
        "per_class": {
            name: {
                "precision": round(float(prec[i]), 6),
                "recall": round(float(rec[i]), 6),
                "f1": round(float(f1[i]), 6),
                "support": int(support[i]),
            }
            for i, name in enumerate(CLASS_NAMES)
        },
    }


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """p_fake from logits, without overflow warnings at extreme logits."""
    return expit(np.asarray(logits, dtype=np.float64))
