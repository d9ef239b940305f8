"""Route ``adapt``: frozen representation, new adaptation layers FCa (2048, ReLU, dropout) + FCb (DESIGN.md route 4).

Oquab et al. 2014, sec. 3.2: the source classifier is dropped (label bias: source and target label
sets differ), the representation is kept fixed, and two new layers are trained on the target task.
Without augmentation (the default, ``adapt.augment=false``) the representation's output never
changes, so features are extracted once (cached) and only the head trains: seconds, not minutes.
With ``adapt.augment=true`` the head trains through images with ``train.augment`` in graft's one loop.
Multi-label sets train with per-class binary cross-entropy and select the epoch by validation mAP.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
from torch import nn

from graft.backbones import weights_hash
from graft.data.sources import ImageSet
from graft.heads import AdaptationHead, attach_head
from graft.multilabel import evaluate_scores
from graft.routes.registry import register_route
from graft.routes.context import Context, RouteResult
from graft.routes.finetune import run_stages
from graft.train.features_loop import fit_head, head_logits
from graft.train.groups import Stage


def targets_of(images: ImageSet) -> np.ndarray:
    """(N,) class indices, or (N, C) 0/1 targets for multi-label sets."""
    return images.targets if images.multilabel else images.labels


def score_function(features: np.ndarray, images: ImageSet) -> tuple[Callable[[nn.Module], float], str]:
    """Validation score of a head on cached features: mAP for multi-label sets, accuracy otherwise."""
    if images.multilabel:
        return (lambda head: evaluate_scores(head_logits(head, features), images.targets, images.classes).mean_ap), "val_mAP"
    return (lambda head: float((head_logits(head, features).argmax(1) == images.labels).mean())), "val_accuracy"


@register_route("adapt", features_only=True)
def adapt(context: Context) -> RouteResult:
    config, recipe = context.recipe.adapt, context.recipe
    model = context.model()
    head = AdaptationHead(model.num_features, context.num_classes, config.hidden, config.dropout, context.recipe.model.head_init)
    attach_head(model, head)
    before = weights_hash(model)
    info = {"head": head.spec}
    if config.augment:
        context.reporter.print("adapt: training FCa/FCb through augmented images (adapt.augment=true)")
        result = run_stages(context, model, [Stage("new", config.epochs)])
        result.info.update(info, trained_on="images", backbone_unchanged=weights_hash(model) == before)
        return result
    context.reporter.print("adapt: no augmentation asked for, so FCa/FCb train on cached features (adapt.augment=true trains through images)")
    train_x = context.features(model, context.train)
    score: Optional[Callable[[nn.Module], float]] = None
    name = "val_accuracy"
    if context.val is not None and len(context.val):
        score, name = score_function(context.features(model, context.val), context.val)
    history = fit_head(head, train_x, targets_of(context.train), recipe.train, config.epochs, config.batch_size, recipe.runtime.seed,
                       score=score, score_name=name, reporter=context.reporter, log=context.run.log)
    test_logits = head_logits(head, context.features(model, context.test)) if context.test is not None and len(context.test) else None
    info.update(trained_on="cached features", backbone_unchanged=weights_hash(model) == before)
    return RouteResult(model, info, history, test_logits)
