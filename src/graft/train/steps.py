"""Per-batch logic as small step objects returning {"loss", "logits", ...} (DESIGN.md §3).

Routes that differ only in their loss (distillation, pseudo-labels, exemplar training)
provide another step; the loop stays the same.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn


class SupervisedStep:
    """Cross-entropy (with label smoothing) on labelled batches, optional MixUp/CutMix on the batch."""

    def __init__(self, label_smoothing: float = 0.0, mixer: Optional[Callable[..., Any]] = None) -> None:
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.mixer = mixer

    def __call__(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], train: bool = True) -> dict[str, torch.Tensor]:
        images, labels = batch
        targets = labels
        if train and self.mixer is not None:
            images, targets = self.mixer(images, labels)  # targets become (B, C) soft labels
        logits = model(images)
        return {"loss": self.criterion(logits, targets), "logits": logits, "labels": labels}
