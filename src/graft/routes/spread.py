"""Route ``spread``: semi-supervised learning on cached frozen features, graft's cheap use of unlabelled images.

The labels of the labelled images spread over a k-NN graph of the frozen features of labelled, validation and
unlabelled images (Zhou et al. 2004 label spreading, on the weighted graph of Iscen et al. 2019; see
:mod:`graft.spreading`). Every unlabelled image gets the class its row points to, weighted by its certainty and by
the inverse size of its class (Iscen et al. 2019 eq. 9-10), and the linear probe is fitted on the labelled images
plus the weighted pseudo-labels. The result is the backbone with that linear head: as cheap to use as ``linear``,
and the backbone stays bit-identical.

Choices made on the validation split only: k and α by the spread's accuracy on the validation images (they are
nodes of the graph, their labels unseen), then the probe's C by the validation accuracy of probes fitted with the
chosen spread. The final spread seeds the training and validation labels together (as ``linear`` pools them).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from graft.backbones import weights_hash
from graft.data.unlabeled import hidden_labels
from graft.errors import GraftError
from graft.probe import fit_probe
from graft.recipe import LinearConfig, SpreadConfig
from graft.routes.context import Context, RouteResult
from graft.routes.pseudo import require_unlabeled
from graft.routes.registry import register_route
from graft.spreading import Neighbours, certainty, graph_features, nearest_neighbours, spread_labels


def pseudo_weights(scores: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, weights) of spread ``scores`` (N, C): the argmax class, weighted by certainty and by
    ``N / (C · size of that class)`` so every class weighs the same in total (Iscen et al. 2019 eq. 10)."""
    labels = scores.argmax(1)
    sizes = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return labels, certainty(scores) * len(labels) / (num_classes * np.maximum(sizes[labels], 1))


def choose_spread(neighbours: Neighbours, seed_count: int, seed_labels: np.ndarray, val_rows: np.ndarray, val_labels: np.ndarray,
                  num_classes: int, config: SpreadConfig) -> tuple[tuple[int, float], dict[str, float], np.ndarray]:
    """(k, α) with the best spread accuracy on the validation nodes (ties: the smaller k, then the smaller α), every
    pair's score, and the chosen pair's (N, C) spread."""
    scores: dict[str, float] = {}
    spreads: dict[tuple[int, float], np.ndarray] = {}
    for k in config.k_grid:
        for alpha in config.alpha_grid:
            spreads[k, alpha] = spread_labels(neighbours, np.arange(seed_count), seed_labels, num_classes, k, alpha, config.gamma)
            scores[f"k={k},alpha={alpha}"] = round(float((spreads[k, alpha][val_rows].argmax(1) == val_labels).mean()), 4)
    best = max(spreads, key=lambda pair: (scores[f"k={pair[0]},alpha={pair[1]}"], -pair[0], -pair[1]))
    return best, scores, spreads[best]


@register_route("spread", features_only=True, unlabeled=True)
def spread(context: Context) -> RouteResult:
    if context.train.multilabel:
        raise GraftError(f"{context.train.origin}: route spread spreads single labels; use --route adapt, finetune or patches")
    unlabeled, config, seed = require_unlabeled(context), context.recipe.spread, context.recipe.runtime.seed
    classes = context.num_classes
    pool_rows = np.arange(len(unlabeled))
    if len(unlabeled) > config.max_pool:
        pool_rows = np.sort(np.random.default_rng(seed).choice(len(unlabeled), config.max_pool, replace=False))
        context.reporter.print(f"spread: {config.max_pool} of {len(unlabeled)} unlabelled images join the graph (spread.max_pool)")
        unlabeled = unlabeled.subset(pool_rows)
    model = context.model()
    before = weights_hash(model)
    train_x, train_y = context.features(model, context.train), context.train.labels
    has_val = context.val is not None and len(context.val) > 0
    val_x = context.features(model, context.val) if has_val else np.zeros((0, train_x.shape[1]), np.float32)
    val_y = context.val.labels if has_val else np.zeros(0, np.int64)
    pool_x = context.features(model, unlabeled)
    nodes = np.concatenate([train_x, val_x, pool_x])
    neighbours = nearest_neighbours(graph_features(nodes, config.dims, seed), max(config.k_grid))
    labelled = len(train_x) + len(val_x)
    info: dict[str, Any] = {"pool": int(len(pool_x)), "graph_nodes": int(len(nodes))}
    if has_val:
        (k, alpha), info["spread_scores"], spread_scores = choose_spread(neighbours, len(train_x), train_y,
                                                                         np.arange(len(train_x), labelled), val_y, classes, config)
        # the probe's C, on validation: probes fitted on the training labels plus the pool as spread from them
        pseudo, weight = pseudo_weights(spread_scores[labelled:], classes)
        chosen = fit_probe(np.concatenate([train_x, pool_x]), np.concatenate([train_y, pseudo]), val_x, val_y, classes,
                           context.recipe.linear, seed, np.concatenate([np.ones(len(train_x)), weight]))
        c, info["probe_scores"] = chosen.c, {str(key): round(v, 4) for key, v in chosen.scores.items()}
        info["selection"] = "validation"
    else:
        k, alpha, c = config.k_grid[len(config.k_grid) // 2], max(config.alpha_grid), None
        info["selection"] = "none (no validation split): the middle k, the largest alpha, C by cross-validation of the labels"
    # the final model: every label (training and validation) seeds the spread, as `linear` pools them
    seed_labels = np.concatenate([train_y, val_y])
    spread_scores = spread_labels(neighbours, np.arange(labelled), seed_labels, classes, k, alpha, config.gamma)
    pseudo, weight = pseudo_weights(spread_scores[labelled:], classes)
    linear = context.recipe.linear
    if c is None:
        c = fit_probe(np.concatenate([train_x, val_x]), seed_labels, None, None, classes, linear, seed).c
    probe = fit_probe(np.concatenate([train_x, val_x, pool_x]), np.concatenate([seed_labels, pseudo]), None, None, classes,
                      _one_c(linear, c), seed, np.concatenate([np.ones(labelled), weight]))
    probe.copy_into(model)
    info.update({"k": k, "alpha": alpha, "probe_c": c, "pseudo_per_class": np.bincount(pseudo, minlength=classes).tolist(),
                 "mean_certainty": round(float(certainty(spread_scores[labelled:]).mean()), 4) if len(pseudo) else None})
    audit = _audit(context, pool_rows, pseudo)
    if audit is not None:
        info["pseudo_label_accuracy"] = audit
    info["backbone_unchanged"] = weights_hash(model) == before
    context.run.log(event="spread", **info)
    context.reporter.print(f"spread over {len(nodes)} images: k={k}, alpha={alpha}, C={c}"
                           + (f", pool labelled {audit:.1%} right" if audit is not None else ""))
    test_logits = None
    if context.test is not None:
        test_logits = context.features(model, context.test) @ probe.weight.T + probe.bias
    return RouteResult(model, info, test_logits=test_logits)


def _one_c(linear: LinearConfig, c: float) -> LinearConfig:
    """The linear config with C fixed (the final fit chooses nothing)."""
    return dataclasses.replace(linear, c_grid=[c])


def _audit(context: Context, pool_rows: np.ndarray, pseudo: np.ndarray) -> Optional[float]:
    """With ``--audit``: the share of the pool's pseudo-labels that match its hidden labels (read only here)."""
    if not context.recipe.pseudo.audit or len(pseudo) == 0:
        return None
    hidden = hidden_labels(context.recipe.data.unlabeled, context.train.classes)[pool_rows]
    return round(float((hidden == pseudo).mean()), 4)
