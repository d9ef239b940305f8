"""What graft's two training loops share: the optimizer, the learning-rate schedule, per-epoch seeds and keeping
the best weights by validation score.

:func:`graft.train.loop.train_stages` trains on images, :func:`graft.train.features_loop.fit_head` on cached
features; both build the optimizer with :func:`make_optimizer`, set each step's learning rate with
:func:`set_learning_rates`, seed each epoch with :func:`epoch_seed` and end on :class:`BestWeights`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from graft.recipe import TrainConfig


def lr_factor(config: TrainConfig, progress: float, epoch: int, epochs: int) -> float:
    """Multiplier of each group's base lr: linear warm-up then cosine to 0, step decay, or constant."""
    warm = config.warmup_epochs / max(epochs, 1)
    if progress < warm:
        return 0.1 + 0.9 * progress / warm
    if config.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (progress - warm) / max(1 - warm, 1e-8)))
    if config.schedule == "step":
        return config.step_gamma ** (epoch // config.step_epochs)
    return 1.0


def set_learning_rates(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Every group's lr = its ``base_lr`` x ``factor`` (groups keep their own base: a backbone trains at a fraction)."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def make_optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=groups[0]["lr"])


def epoch_seed(seed: int, stage: int, epoch: int) -> int:
    """The seed of one epoch of one stage: a resumed run draws what the uninterrupted one would have drawn."""
    return (seed * 1_000_003 + stage * 10_007 + epoch * 101) % (2**31)


class BestWeights:
    """A copy of a module's weights at its best validation score so far, put back when training ends.

    Scores are tuples compared in order, higher is better: ``(accuracy, -loss)`` breaks accuracy ties by the
    lower loss. A resumed run starts from the score and weights its checkpoint kept.
    """

    def __init__(self, score: Optional[tuple[float, ...]] = None, state: Optional[dict[str, torch.Tensor]] = None) -> None:
        self.score, self.state = score, state

    def keep(self, module: nn.Module, score: tuple[float, ...]) -> None:
        self.score, self.state = score, {k: v.detach().clone() for k, v in module.state_dict().items()}

    def offer(self, module: nn.Module, score: tuple[float, ...]) -> bool:
        """Keep ``module``'s weights if ``score`` beats the best so far; True when it did."""
        if self.score is not None and not score > self.score:
            return False
        self.keep(module, score)
        return True

    def restore(self, module: nn.Module) -> None:
        if self.state is not None:
            module.load_state_dict(self.state)
