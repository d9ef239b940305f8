"""Training a head on cached (frozen) features: the feature-space counterpart of :func:`graft.train.loop.train_stages`.

With a frozen representation every epoch sees the same features, so they are extracted once
(:mod:`graft.features`) and only the head trains: seconds instead of minutes (Oquab et al. 2014
train their adaptation layers on a fixed representation). It uses the loop's optimizer, learning-rate
schedule, per-epoch seeding, loss and best-weights restore (:mod:`graft.train.schedule`,
:func:`graft.train.steps.classification_loss`); batches are rows of a tensor instead of decoded images.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

import numpy as np
import torch
from timm.optim import param_groups_weight_decay
from torch import nn

from graft.console import Reporter
from graft.recipe import TrainConfig
from graft.train.schedule import BestWeights, epoch_seed, lr_factor, make_optimizer, set_learning_rates
from graft.train.steps import classification_loss, hits


def fit_head(head: nn.Module, features: np.ndarray, targets: np.ndarray, config: TrainConfig, epochs: int, batch_size: int,
             seed: int, *, loss_weights: Optional[np.ndarray] = None, draw_weights: Optional[np.ndarray] = None,
             score: Optional[Callable[[nn.Module], float]] = None, score_name: str = "val_accuracy", reporter: Optional[Reporter] = None,
             log: Optional[Callable[..., None]] = None) -> list[dict[str, Any]]:
    """Train ``head`` in place on (N, D) ``features``; restore the epoch with the best ``score`` (higher is better).

    ``targets``: (N,) class indices (cross-entropy with the recipe's label smoothing) or (N, C) 0/1
    (binary cross-entropy). ``loss_weights`` (N,) re-weight each row's loss (normalised to mean 1 per
    batch); ``draw_weights`` (N,) make each epoch draw N rows with replacement in proportion to them
    (re-weighting by sampling). ``score(head)`` is called in eval mode after every epoch and recorded as ``score_name``.
    """
    x = torch.from_numpy(np.ascontiguousarray(features, np.float32))
    y = torch.from_numpy(targets)
    # without loss_weights every row weighs 1: weighted or not, a head takes the same per-row arithmetic
    weights = torch.ones(len(x)) if loss_weights is None else torch.from_numpy(np.asarray(loss_weights, np.float32))
    draw = None if draw_weights is None else torch.from_numpy(np.asarray(draw_weights, np.float64))
    groups = param_groups_weight_decay(head, config.weight_decay)  # biases and other 1-D parameters: no decay
    for group in groups:
        group["lr"] = group["base_lr"] = config.lr
    optimizer = make_optimizer(config, groups)
    steps = max(1, -(-len(x) // batch_size))
    history: list[dict[str, Any]] = []
    best = BestWeights(score=(-float("inf"),))
    for epoch in range(epochs):
        started = time.time()
        generator = torch.Generator().manual_seed(epoch_seed(seed, 0, epoch))
        order = torch.multinomial(draw, len(x), replacement=True, generator=generator) if draw is not None \
            else torch.randperm(len(x), generator=generator)
        torch.manual_seed(epoch_seed(seed + 1, 0, epoch))  # dropout masks
        head.train()
        sums = torch.zeros(3)
        for i in range(steps):
            rows = order[i * batch_size:(i + 1) * batch_size]
            set_learning_rates(optimizer, lr_factor(config, (epoch * steps + i) / (epochs * steps), epoch, epochs))
            logits = head(x[rows])
            loss = classification_loss(logits, y[rows], multilabel=y.ndim == 2, label_smoothing=config.label_smoothing,
                                       row_weights=weights[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.tensor([loss.item() * len(rows), hits(logits.detach(), y[rows]).sum().item(), len(rows)])
        record: dict[str, Any] = {"event": "epoch", "stage_name": "head", "epoch": epoch + 1, "train_loss": float(sums[0] / sums[2]),
                                  "train_accuracy": float(sums[1] / sums[2])}
        if score is not None:
            head.eval()
            with torch.no_grad():
                record[score_name] = float(score(head))
            best.offer(head, (record[score_name],))
        record["seconds"] = round(time.time() - started, 3)
        history.append(record)
        if log is not None:
            log(**record)
    if reporter is not None and history:
        last = history[-1]
        reporter.print(f"head: {epochs} epochs on {len(x)} cached feature rows, last train loss {last['train_loss']:.4f}"
                       + (f", best {score_name} {best.score[0]:.4f}" if score is not None else ""))
    best.restore(head)
    head.eval()
    return history


def head_logits(head: nn.Module, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """(N, D) features -> (N, C) logits, head in eval mode."""
    head.eval()
    device = next(head.parameters()).device  # a head trained in the loop on the lifecycle's GPU scores there
    with torch.no_grad():
        chunks = [head(torch.from_numpy(np.ascontiguousarray(features[i:i + batch_size], np.float32)).to(device)).float().cpu()
                  for i in range(0, len(features), batch_size)]
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)


