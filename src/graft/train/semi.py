"""Learning from unlabelled images and from a teacher: the losses, the pseudo-label choice and its weight.

- Knowledge distillation, Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network" §2:
  soft targets softmax(z_t/T); the soft-target gradients scale as 1/T², "so it is important to multiply
  them by T²" so that their share stays the same when T changes.
- Pseudo-label selection: per-class self-adaptive thresholds after FreeMatch (Wang et al. 2023) and FlexMatch
  (Zhang et al. 2021), see :func:`class_thresholds`.
- Pseudo-labels, Lee 2013, "Pseudo-Label: The Simple and Efficient Semi-Supervised Learning Method for
  Deep Neural Networks", eq. (15)-(16): L = L_labelled + α(t)·L_pseudo with α(t) ramped linearly from 0
  (t < T1) to α_f (t ≥ T2).

:class:`SemiStep` is the one step object of both routes (and of their composition): the training loop
hands it a labelled batch and an unlabelled batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from graft.data.transforms import Preprocessing, TwoViews
from graft.recipe import AugmentConfig
from graft.train.steps import classification_loss


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: Optional[torch.Tensor], alpha: float = 0.9,
            temperature: float = 4.0) -> torch.Tensor:
    """α·T²·KL(softmax(teacher/T) ‖ softmax(student/T)) + (1−α)·CE(student, labels), averaged over the batch.

    student, teacher: (B, C) logits; labels: (B,) class indices, or None for unlabelled images (then only
    the α·T²·KL term). At α=0 this is plain cross-entropy.
    """
    log_student = F.log_softmax(student.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher.float() / temperature, dim=1)
    soft = F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * temperature**2
    if labels is None:
        return alpha * soft
    return alpha * soft + (1 - alpha) * F.cross_entropy(student.float(), labels)


def pseudo_weight(progress: float, alpha_f: float = 3.0, start: float = 0.1, end: float = 0.6) -> float:
    """Lee 2013 eq. (16): α(t) = 0 for t < T1, α_f·(t−T1)/(T2−T1) for T1 ≤ t < T2, α_f from T2 on.

    ``progress`` t, ``start`` T1 and ``end`` T2 are fractions of the whole training (0..1), so the
    schedule scales with the number of epochs.
    """
    if progress < start:
        return 0.0
    if progress >= end:
        return alpha_f
    return alpha_f * (progress - start) / (end - start)


@dataclass(frozen=True)
class Selection:
    """Which unlabelled images join training (``indices`` sorted, with ``labels``), and the rule that chose them."""

    indices: np.ndarray
    labels: np.ndarray
    thresholds: np.ndarray  # (C,) the least probability a pseudo-label of each class needed
    candidates: np.ndarray  # (C,) images above their class's threshold, before top_k and balance
    mean_confidence: float  # mean over the pool of the top class probability


def class_thresholds(probabilities: np.ndarray, threshold: Optional[float] = None, per_class: bool = True) -> np.ndarray:
    """(C,) least probability of a pseudo-label of each class. A pure function.

    FreeMatch (Wang et al. 2023, "FreeMatch: Self-adaptive Thresholding for Semi-supervised Learning", §3.2) computed
    on the whole pool at once: the global threshold τ is the mean top-class probability over the pool (``threshold``
    None: self-adaptive) or the fixed ``threshold``; ``per_class`` scales it per class by MaxNorm of the mean
    probability the model gives each class, τ_c = τ · p̃_c / max_c p̃_c, so a class the model rarely predicts
    confidently (a hard class) needs less, as FlexMatch's "curriculum pseudo-labelling" argues (Zhang et al. 2021).
    """
    if len(probabilities) == 0:
        return np.full(probabilities.shape[1], 1.0 if threshold is None else float(threshold))
    return thresholds_from(float(probabilities.max(1).mean()), probabilities.mean(0), threshold, per_class)


def thresholds_from(mean_top: float, mean_class: np.ndarray, threshold: Optional[float], per_class: bool) -> np.ndarray:
    """(C,) τ_c = τ · p̃_c / max p̃ from the statistics FreeMatch keeps: the mean top probability (τ unless
    ``threshold`` fixes it) and the mean probability of each class (:func:`class_thresholds`)."""
    tau = mean_top if threshold is None else float(threshold)
    if not per_class:
        return np.full(len(mean_class), tau)
    return tau * mean_class / max(float(mean_class.max()), 1e-12)


def select_pseudo_labels(probabilities: np.ndarray, threshold: Optional[float] = None, top_k: Optional[int] = None,
                         balance: bool = False, per_class: bool = True) -> Selection:
    """Which unlabelled images join training, and with which class. A pure function.

    probabilities: (N, C) class probabilities. An image is a candidate for its most probable class if that
    probability reaches the class's threshold (:func:`class_thresholds`; ``threshold=0``: every image, as Lee 2013).
    ``top_k``: each class keeps at most its k most confident candidates. ``balance``: every class keeps as many as
    the class with the fewest candidates (classes with none are left out, and reported as 0).
    """
    labels = probabilities.argmax(1)
    confidence = probabilities.max(1)
    thresholds = class_thresholds(probabilities, threshold, per_class)
    candidates = confidence >= thresholds[labels] - 1e-12
    per_class_members = []
    for c in range(probabilities.shape[1]):
        members = np.flatnonzero(candidates & (labels == c))
        per_class_members.append(members[np.argsort(-confidence[members], kind="stable")])
    limit = top_k if top_k is not None else len(labels)
    if balance:
        present = [len(m) for m in per_class_members if len(m)]
        limit = min([limit, *present]) if present else 0
    chosen = np.sort(np.concatenate([m[:limit] for m in per_class_members]).astype(np.int64))
    return Selection(chosen, labels[chosen].astype(np.int64), thresholds, np.array([len(m) for m in per_class_members]),
                     float(confidence.mean()) if len(confidence) else 0.0)


class SemiStep:
    """Loss on a labelled batch plus, when given, an unlabelled batch; returns {"loss", "logits", "labels"}.

    Labelled images: CE, or with a teacher the full KD loss. Unlabelled images: with a teacher the α·T²·KL
    term (they have no label for the CE term); with pseudo-labels (``labels >= 0``) also α(t)·CE on them.
    ``teacher(images, indices, labelled)`` returns (B, C) teacher logits (cached or computed).
    The loop sets ``progress`` (fraction of training done) before each batch, for α(t).
    """

    indexed = True  # batches carry each image's index (the cached teacher logits are looked up by it)

    def __init__(self, teacher: Optional[Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]] = None,
                 alpha: float = 0.9, temperature: float = 4.0, weight: Optional[Callable[[float], float]] = None,
                 label_smoothing: float = 0.0) -> None:
        self.teacher, self.alpha, self.temperature, self.weight = teacher, alpha, temperature, weight
        self.label_smoothing = label_smoothing
        self.progress = 0.0

    def __call__(self, model: nn.Module, batch: tuple[torch.Tensor, ...], unlabeled: Optional[tuple[torch.Tensor, ...]] = None,
                 train: bool = True) -> dict[str, torch.Tensor]:
        images, labels, indices = batch
        if unlabeled is None:
            logits, unlabeled_logits = model(images), None
        else:  # one forward pass over both batches
            both = model(torch.cat([images, unlabeled[0]]))
            logits, unlabeled_logits = both[: len(images)], both[len(images):]
        if self.teacher is None:
            loss = classification_loss(logits, labels, label_smoothing=self.label_smoothing)
        else:
            loss = kd_loss(logits, self.teacher(images, indices, True), labels, self.alpha, self.temperature)
        if unlabeled_logits is not None:
            unlabeled_images, pseudo, unlabeled_indices = unlabeled
            if self.teacher is not None:
                loss = loss + kd_loss(unlabeled_logits, self.teacher(unlabeled_images, unlabeled_indices, False), None,
                                      self.alpha, self.temperature)
            chosen = pseudo >= 0
            if self.weight is not None and bool(chosen.any()):
                loss = loss + self.weight(self.progress) * F.cross_entropy(unlabeled_logits[chosen].float(), pseudo[chosen])
        return {"loss": loss, "logits": logits, "labels": labels}


class ConsistencyStep:
    """FixMatch (Sohn et al. 2020, "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence"):
    the weak view of an unlabelled image labels it, the strong view learns that label where the weak view is
    confident: L = CE(labelled) + λ_u · mean(mask · CE(strong, argmax weak)).

    The mask is the rule of route ``pseudo``'s offline selection (:func:`thresholds_from`), with FreeMatch's
    statistics kept as exponential moving averages over batches (momentum 0.999 in the paper; 0.99 here, as graft's
    runs are a few thousand steps), starting at 1/C. Unlabelled batches are (B, 2, 3, S, S) weak/strong pairs
    (:class:`graft.data.transforms.TwoViews`, from ``unlabeled_views``); all three go through one forward pass.
    The statistics are part of the run's checkpoint (``state_dict``), so a resumed run is exact.
    """

    def __init__(self, classes: int, threshold: Optional[float] = None, per_class: bool = True, weight: float = 1.0,
                 momentum: float = 0.99, label_smoothing: float = 0.0) -> None:
        self.threshold, self.per_class, self.weight, self.momentum = threshold, per_class, weight, momentum
        self.label_smoothing = label_smoothing
        self.mean_top, self.mean_class = 1.0 / classes, np.full(classes, 1.0 / classes)
        self.masked = [0, 0]  # unlabelled images above their threshold, seen

    def unlabeled_views(self, pre: Preprocessing, augment: AugmentConfig) -> Callable[[torch.Tensor], torch.Tensor]:
        return TwoViews(pre, augment)

    def state_dict(self) -> dict[str, object]:
        return {"mean_top": self.mean_top, "mean_class": self.mean_class.tolist(), "masked": list(self.masked)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.mean_top, self.mean_class, self.masked = float(state["mean_top"]), np.array(state["mean_class"]), list(state["masked"])

    def __call__(self, model: nn.Module, batch: tuple[torch.Tensor, ...], unlabeled: Optional[tuple[torch.Tensor, ...]] = None,
                 train: bool = True) -> dict[str, torch.Tensor]:
        images, labels = batch[0], batch[1]
        if unlabeled is None:
            logits = model(images)
            return {"loss": classification_loss(logits, labels, label_smoothing=self.label_smoothing), "logits": logits, "labels": labels}
        views = unlabeled[0]
        weak, strong = views[:, 0], views[:, 1]
        if images.is_contiguous(memory_format=torch.channels_last):
            weak, strong = (v.contiguous(memory_format=torch.channels_last) for v in (weak, strong))
        both = model(torch.cat([images, weak, strong]))
        logits, weak_logits, strong_logits = both[: len(images)], both[len(images): len(images) + len(weak)], both[len(images) + len(weak):]
        loss = classification_loss(logits, labels, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            probabilities = torch.softmax(weak_logits.float(), 1)
            confidence, guess = probabilities.max(1)
            m = self.momentum
            self.mean_top = m * self.mean_top + (1 - m) * float(confidence.mean())
            self.mean_class = m * self.mean_class + (1 - m) * probabilities.mean(0).cpu().numpy()
            thresholds = torch.as_tensor(thresholds_from(self.mean_top, self.mean_class, self.threshold, self.per_class),
                                         dtype=confidence.dtype, device=confidence.device)
            mask = (confidence >= thresholds[guess]).float()
            self.masked = [self.masked[0] + int(mask.sum()), self.masked[1] + len(mask)]
        unlabeled_loss = (F.cross_entropy(strong_logits.float(), guess, reduction="none") * mask).mean()
        return {"loss": loss + self.weight * unlabeled_loss, "logits": logits, "labels": labels}
