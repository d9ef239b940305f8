"""Per-class average precision and mAP for multi-label image classification (Pascal VOC classification style).

AP of one class ranks all test images by their score for it and averages the precision at each
recall step: AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds (tied scores form
one step). This is the non-interpolated AP of VOC 2010+, computed by scikit-learn's
``average_precision_score``; Oquab et al. 2014 report per-class AP and mAP on VOC 2007/2012.
A class with no positive test image has no AP (NaN) and is left out of the mean.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP of (N,) ``scores`` against (N,) 0/1 ``positives``; NaN when there is no positive (scikit-learn would warn and say 0)."""
    positives = np.asarray(positives) > 0
    if not positives.any():
        return float("nan")
    return float(average_precision_score(positives, np.asarray(scores, np.float64)))


@dataclass
class MultiLabelEvaluation:
    """Per-class AP and their mean over the classes present in the test set."""

    mean_ap: float
    per_class_ap: dict[str, float]
    classes: list[str]
    count: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"mAP": self.mean_ap, "per_class_ap": self.per_class_ap, "count": self.count, "classes": self.classes, **self.extra}


def evaluate_scores(scores: np.ndarray, targets: np.ndarray, classes: list[str]) -> MultiLabelEvaluation:
    """(N, C) scores (logits or probabilities: only the ranking counts) against (N, C) 0/1 targets."""
    per_class = {name: average_precision(scores[:, i], targets[:, i]) for i, name in enumerate(classes)}
    present = [ap for ap in per_class.values() if not np.isnan(ap)]
    return MultiLabelEvaluation(float(np.mean(present)) if present else float("nan"), per_class, list(classes), len(scores))
