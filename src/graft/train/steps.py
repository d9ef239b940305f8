"""Per-batch logic as small step objects returning {"loss", "logits", ...} (DESIGN.md §3).

Routes that differ only in their loss (distillation, pseudo-labels, exemplar training)
provide another step; the loop stays the same.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool = False, label_smoothing: float = 0.0,
                        row_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The loss of a batch of (B, C) ``logits``, averaged over the batch: graft's one loss choice, for both loops.

    Single-label: cross-entropy with ``label_smoothing`` (Szegedy et al. 2016) on (B,) class indices or (B, C)
    class probabilities (MixUp/CutMix targets). ``multilabel``: (B, C) 0/1 targets, binary cross-entropy per
    class averaged over the classes (Oquab et al. 2014, VOC). ``row_weights`` (B,): each row's loss is
    weighted, the weights normalised to mean 1 over the batch so the learning rate keeps its meaning.
    """
    if row_weights is None:
        if multilabel:
            return F.binary_cross_entropy_with_logits(logits, targets.float())
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    if multilabel:
        per_row = F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none").mean(1)
    else:
        per_row = F.cross_entropy(logits, targets, reduction="none", label_smoothing=label_smoothing)
    return (per_row * (row_weights / row_weights.mean().clamp_min(1e-12))).mean()


class SupervisedStep:
    """Cross-entropy (with label smoothing) on labelled batches, optional MixUp/CutMix on the batch."""

    def __init__(self, label_smoothing: float = 0.0, mixer: Optional[Callable[..., Any]] = None) -> None:
        self.label_smoothing = label_smoothing
        self.mixer = mixer

    def __call__(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], train: bool = True) -> dict[str, torch.Tensor]:
        images, labels = batch
        targets = labels
        if train and self.mixer is not None:
            images, targets = self.mixer(images, labels)  # targets become (B, C) soft labels
        logits = model(images)
        return {"loss": classification_loss(logits, targets, label_smoothing=self.label_smoothing), "logits": logits, "labels": labels}


class MultiLabelStep:
    """Binary cross-entropy per class on (B, C) 0/1 targets: several labels per image (Oquab et al. 2014, VOC)."""

    def __call__(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], train: bool = True) -> dict[str, torch.Tensor]:
        images, targets = batch
        logits = model(images)
        return {"loss": classification_loss(logits, targets, multilabel=True), "logits": logits, "labels": targets}


def hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Correct top-1 predictions: argmax == label, or (multi-label (B, C) targets) the top class is a positive."""
    if labels.ndim == 2:
        return labels.gather(1, logits.argmax(1, keepdim=True)).squeeze(1) > 0.5
    return logits.argmax(1) == labels


def batch_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy for integer labels; for (B, C) targets binary cross-entropy per class, averaged over classes."""
    if labels.ndim == 2:
        per_image = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none").mean(1)
        return per_image.sum() if reduction == "sum" else per_image.mean()
    return nn.functional.cross_entropy(logits.float(), labels, reduction=reduction)
