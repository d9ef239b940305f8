"""Accuracy, per-class accuracy and confusion matrix, from a model or from logits."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from sklearn.metrics import confusion_matrix
from torch import nn

from graft.console import Reporter
from graft.data.sources import ImageSet
from graft.data.transforms import Preprocessing
from graft.features import map_batches
from graft.placement import Placement


@dataclass
class Evaluation:
    """Metrics of one model on one labelled image set. ``confusion[i, j]``: true class i predicted as j."""

    accuracy: float
    per_class: dict[str, float]
    confusion: np.ndarray
    classes: list[str]
    count: int
    loss: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "loss": self.loss, "count": self.count, "per_class_accuracy": self.per_class,
                "confusion": self.confusion.tolist(), "classes": self.classes, **self.extra}


def predict_logits(model: nn.Module, images: ImageSet, pre: Preprocessing, batch_size: int = 128,
                   reporter: Optional[Reporter] = None, channels_last: bool = True, placement: Placement = Placement()) -> np.ndarray:
    """(N, C) float32 logits of ``images`` (model in eval mode on ``placement``; its mode and device are restored)."""
    return map_batches(model, images, pre, model, batch_size, reporter, channels_last, what="predict", placement=placement)


def evaluate_logits(logits: np.ndarray, labels: np.ndarray, classes: list[str]) -> Evaluation:
    """Metrics from (N, C) logits and (N,) integer labels."""
    predictions = logits.argmax(1)
    confusion = (confusion_matrix(labels, predictions, labels=np.arange(len(classes))).astype(np.int64) if len(labels)
                 else np.zeros((len(classes), len(classes)), np.int64))  # scikit-learn refuses an empty set
    totals = confusion.sum(1)
    per_class = {c: float(confusion[i, i] / totals[i]) if totals[i] else float("nan") for i, c in enumerate(classes)}
    loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits).float(), torch.from_numpy(labels)).item()) if len(labels) else float("nan")
    return Evaluation(float((predictions == labels).mean()) if len(labels) else float("nan"), per_class, confusion, classes, len(labels), loss)


def evaluate_model(model: nn.Module, images: ImageSet, pre: Preprocessing, batch_size: int = 128,
                   reporter: Optional[Reporter] = None, placement: Placement = Placement()) -> Evaluation:
    return evaluate_logits(predict_logits(model, images, pre, batch_size, reporter, placement=placement), images.labels, images.classes)
