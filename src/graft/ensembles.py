"""Combining classifiers: greedy ensemble selection, the ensemble network, and horizontal-flip test-time augmentation.

Ensemble selection: Caruana, Niculescu-Mizil, Crew & Ksikes 2004, "Ensemble Selection from Libraries of Models"
(sec. 2: forward stepwise selection *with replacement* from the library, each step adding the model that most
improves the ensemble's validation score; the ensemble of the best step is returned; a model chosen k times
weighs k / steps). Both networks here output log-probabilities, so softmax of their output is the averaged
probability and argmax is its prediction: `graft predict` and `graft evaluate` treat them as logits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from graft.errors import GraftError


@dataclass
class Selection:
    """Greedy selection's result: ``weights[i]`` of library model i (sum 1), the validation accuracy and log-loss of the
    weighted mean of probabilities, and the accuracy after each step (``path``)."""

    weights: np.ndarray
    accuracy: float
    log_loss: float
    path: list[float]

    @property
    def members(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.weights > 0)]


def gain_p_value(right: np.ndarray, baseline_right: np.ndarray) -> float:
    """One-sided exact McNemar test (a sign test on the images where exactly one of the two is right): the chance of
    ``right`` (N,) booleans beating ``baseline_right`` on the same images at least this clearly if neither were better.
    A gain of a few images on a small validation split is mostly luck: measured on PneumoniaMNIST, ensembles that won
    validation by 0.6-0.8 points (3-4 of 524 images) lost 1.6-3.0 points on test."""
    from scipy.stats import binomtest

    wins, losses = int((right & ~baseline_right).sum()), int((~right & baseline_right).sum())
    return 1.0 if wins + losses == 0 else float(binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue)


def accuracy_and_log_loss(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean negative log-likelihood) of (N, C) probabilities."""
    accuracy = float((probabilities.argmax(1) == labels).mean())
    log_loss = float(-np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, None)).mean())
    return accuracy, log_loss


def greedy_selection(probabilities: Sequence[np.ndarray], labels: np.ndarray, steps: int = 20) -> Selection:
    """Caruana et al. 2004 forward selection with replacement over a library of (N, C) validation ``probabilities``.

    Starts from the empty ensemble; each of ``steps`` steps adds (again, possibly) the model whose addition gives the
    best validation accuracy, ties to the lower log-loss (accuracy alone ties often on a small validation split).
    Returns the best ensemble over all steps (fewest steps on a tie), so the best single model is the floor.
    """
    if not probabilities:
        raise ValueError("greedy_selection needs at least one model")
    library = [np.asarray(p, np.float64) for p in probabilities]
    counts = np.zeros(len(library), np.int64)
    total = np.zeros_like(library[0])
    best: tuple[tuple[float, float], np.ndarray] = ((-1.0, 0.0), counts.copy())
    path = []
    for step in range(1, steps + 1):
        candidates = [accuracy_and_log_loss((total + p) / step, labels) for p in library]
        choice = max(range(len(library)), key=lambda i: (candidates[i][0], -candidates[i][1]))
        counts[choice] += 1
        total = total + library[choice]
        accuracy, log_loss = candidates[choice]
        path.append(accuracy)
        if (accuracy, -log_loss) > best[0]:
            best = ((accuracy, -log_loss), counts.copy())
    (accuracy, negative_loss), chosen = best
    return Selection(chosen / chosen.sum(), accuracy, -negative_loss, path)


class Ensemble(nn.Module):
    """(B, 3, S, S) images -> (B, C) log of the weighted mean of the members' softmax probabilities.

    Every member must take the same preprocessed input (one size and normalisation); the ensemble is one graph
    (ONNX export writes the members and their weights together)."""

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        if len(members) != len(weights) or not members:
            raise GraftError(f"an ensemble needs one weight per member ({len(members)} members, {len(weights)} weights)")
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.tensor([float(w) for w in weights]) / float(sum(weights)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mixed = sum(self.weights[i] * torch.softmax(member(images).float(), 1) for i, member in enumerate(self.members))
        return torch.log(mixed.clamp_min(1e-12))


class FlipAverage(nn.Module):
    """Test-time augmentation: (B, 3, S, S) -> (B, C) log of the mean softmax of ``model`` on the images and their
    horizontal mirror images (flipped along the width)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        plain = torch.softmax(self.model(images).float(), 1)
        mirrored = torch.softmax(self.model(torch.flip(images, dims=[3])).float(), 1)
        return torch.log((0.5 * (plain + mirrored)).clamp_min(1e-12))


def same_preprocessing(preprocessings: Sequence[dict]) -> bool:
    """Whether every member's recorded preprocessing (size, crop, interpolation, mean, std) is the same."""
    return all(p == preprocessings[0] for p in preprocessings)


__all__ = ["Ensemble", "FlipAverage", "Selection", "accuracy_and_log_loss", "greedy_selection", "same_preprocessing"]
