"""Route ``linear``: frozen features + multinomial logistic regression (DESIGN.md route 1)."""
from __future__ import annotations

import numpy as np
from torch import nn

from graft.backbones import weights_hash
from graft.errors import GraftError
from graft.probe import ProbeResult, fit_probe
from graft.routes.registry import register_route
from graft.routes.context import Context, RouteResult


def probe_model(context: Context, model: nn.Module, pool_validation: bool) -> tuple[ProbeResult, dict]:
    """Fit the probe on cached features and copy it into ``model``'s head. The backbone is never modified.

    ``pool_validation``: choose C by cross-validation over train and validation images together and
    fit on all of them (the ``linear`` route); otherwise choose C on the validation split and keep it
    unseen (LP-FT, whose fine-tuning stage selects its epoch on it).
    """
    if context.train.multilabel:
        raise GraftError(f"{context.train.origin}: route '{context.recipe.route}' fits a single-label probe, but this data has several "
                         "labels per image; use --route adapt, finetune or patches")
    train_x = context.features(model, context.train)
    labels = context.train.labels
    val_x = context.features(model, context.val) if context.val is not None and len(context.val) else None
    val_y = None if val_x is None else context.val.labels
    if pool_validation and val_x is not None:
        train_x, labels, val_x, val_y = np.concatenate([train_x, val_x]), np.concatenate([labels, val_y]), None, None
    probe = fit_probe(train_x, labels, val_x, val_y, context.num_classes, context.recipe.linear, context.recipe.runtime.seed)
    probe.copy_into(model)
    info = {"probe_c": probe.c, "probe_selection": probe.selection, "probe_scores": {str(c): round(s, 4) for c, s in probe.scores.items()},
            "probe_images": int(len(labels))}
    context.run.log(event="probe", **info)
    context.reporter.print(f"linear probe on {len(labels)} images: C={probe.c} chosen by {probe.selection} ({info['probe_scores']})")
    return probe, info


@register_route("linear", features_only=True)
def linear(context: Context) -> RouteResult:
    model = context.model()
    before = weights_hash(model)
    probe, info = probe_model(context, model, pool_validation=context.recipe.linear.pool_validation)
    info["backbone_unchanged"] = weights_hash(model) == before
    test_logits = None
    if context.test is not None:
        test_x = context.features(model, context.test)
        test_logits = test_x @ probe.weight.T + probe.bias
    return RouteResult(model, info, test_logits=test_logits)
