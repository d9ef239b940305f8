"""graft's training loops: the head-on-features loop against a plain reference, the shared best-weights restore,
the optimizer's real parameter groups."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from graft.recipe import TrainConfig
from graft.train.features_loop import fit_head


def reference_fit(head: nn.Module, x: np.ndarray, y: np.ndarray, config: TrainConfig, epochs: int, batch_size: int, seed: int,
                  weights=None, draws=None, score=None) -> None:
    """fit_head written out from its definition in plain torch, as a reference.

    Per epoch: rows in the order of a generator seeded (seed, 0, epoch) (a permutation, or N draws with replacement
    in proportion to ``draws``), dropout from the global generator seeded (seed + 1, 0, epoch); per batch: the lr of
    the schedule (linear warm-up from 0.1x, then cosine to 0), per-row loss (CE with label smoothing, or BCE averaged
    over classes) times the row weights normalised to mean 1, averaged; decay on matrices only. Ends on the weights
    of the epoch with the highest score.
    """
    def mix(s: int, epoch: int) -> int:  # graft's per-epoch seed of (seed, stage 0, epoch)
        return (s * 1_000_003 + epoch * 101) % (2**31)

    def factor(progress: float) -> float:
        warm = config.warmup_epochs / epochs
        if progress < warm:
            return 0.1 + 0.9 * progress / warm
        return 0.5 * (1 + math.cos(math.pi * (progress - warm) / max(1 - warm, 1e-8)))

    features, targets = torch.from_numpy(x), torch.from_numpy(y)
    decayed = [p for p in head.parameters() if p.ndim > 1]
    plain = [p for p in head.parameters() if p.ndim <= 1]
    groups = [{"params": decayed, "weight_decay": config.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    optimizer = (torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True) if config.optimizer == "sgd"
                 else torch.optim.AdamW(groups, lr=config.lr))
    steps = -(-len(x) // batch_size)
    best, best_state = -float("inf"), None
    for epoch in range(epochs):
        generator = torch.Generator().manual_seed(mix(seed, epoch))
        order = (torch.multinomial(torch.from_numpy(draws), len(x), replacement=True, generator=generator) if draws is not None
                 else torch.randperm(len(x), generator=generator))
        torch.manual_seed(mix(seed + 1, epoch))
        head.train()
        for i in range(steps):
            rows = order[i * batch_size:(i + 1) * batch_size]
            for group in optimizer.param_groups:
                group["lr"] = config.lr * factor((epoch * steps + i) / (epochs * steps))
            logits = head(features[rows])
            if targets.ndim == 2:
                per_row = nn.functional.binary_cross_entropy_with_logits(logits, targets[rows].float(), reduction="none").mean(1)
            else:
                per_row = nn.functional.cross_entropy(logits, targets[rows], reduction="none", label_smoothing=config.label_smoothing)
            w = torch.ones(len(rows)) if weights is None else torch.from_numpy(weights)[rows]
            loss = (per_row * (w / w.mean().clamp_min(1e-12))).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if score is not None:
            head.eval()
            with torch.no_grad():
                value = score(head)
            if value > best:
                best, best_state = value, {k: v.clone() for k, v in head.state_dict().items()}
    if best_state is not None:
        head.load_state_dict(best_state)


def make_head(seed: int, inputs: int, outputs: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, outputs))


CASES = {
    "adamw, single label": dict(config=TrainConfig(), multilabel=False, weights=False, draws=False),
    "sgd, warm-up, loss weights": dict(config=TrainConfig(optimizer="sgd", lr=0.05, warmup_epochs=1), multilabel=False,
                                               weights=True, draws=False),
    "adamw, sampling weights": dict(config=TrainConfig(label_smoothing=0.0), multilabel=False, weights=False, draws=True),
    "adamw, multi-label": dict(config=TrainConfig(), multilabel=True, weights=False, draws=False),
}


@pytest.mark.parametrize("case", CASES)
def test_fit_head_equals_its_reference_bit_for_bit(case):
    spec = CASES[case]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(70, 12)).astype(np.float32)
    y = (rng.random((70, 4)) < 0.3).astype(np.float32) if spec["multilabel"] else rng.integers(0, 4, 70)
    weights = rng.uniform(0.2, 3.0, 70).astype(np.float32) if spec["weights"] else None
    draws = rng.uniform(0.2, 3.0, 70) if spec["draws"] else None
    probe = torch.from_numpy(rng.normal(size=(20, 12)).astype(np.float32))
    scores: list[float] = []

    def score(head: nn.Module) -> float:  # varies from epoch to epoch, so the restored epoch is not simply the last
        value = float(head(probe).std()) if len(scores) % 2 else -float(head(probe).mean().abs())
        scores.append(value)
        return value

    ours, theirs = make_head(3, 12, 4), make_head(3, 12, 4)
    fit_head(ours, x, y, spec["config"], 6, 16, 5, loss_weights=weights, draw_weights=draws, score=score)
    scores.clear()
    reference_fit(theirs, x, y, spec["config"], 6, 16, 5, weights, draws, score)
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.equal(a, b), name


def test_best_weights_break_accuracy_ties_by_loss_and_restore_the_kept_copy():
    from graft.train.schedule import BestWeights

    layer = nn.Linear(2, 2)
    best = BestWeights()
    assert best.offer(layer, (0.5, -1.0))  # the first score is always kept
    kept = {k: v.clone() for k, v in layer.state_dict().items()}
    with torch.no_grad():
        layer.weight.add_(1.0)
    assert not best.offer(layer, (0.5, -1.2)) and not best.offer(layer, (0.4, 0.0))  # same accuracy, higher loss; lower accuracy
    assert best.offer(layer, (0.5, -0.9))  # same accuracy, lower loss
    with torch.no_grad():
        layer.weight.add_(1.0)
    best.restore(layer)
    assert torch.equal(layer.weight, kept["weight"] + 1.0)  # the copy taken at the offer, not the live weights
