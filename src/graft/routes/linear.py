"""Route ``linear``: frozen features + multinomial logistic regression (DESIGN.md route 1)."""
from __future__ import annotations

import torch
from torch import nn

from graft.backbones import weights_hash
from graft.probe import ProbeResult, fit_probe
from graft.routes import register_route
from graft.routes.context import Context, RouteResult


def probe_model(context: Context, model: nn.Module) -> tuple[ProbeResult, dict]:
    """Fit the probe on cached features and copy it into ``model``'s head. The backbone is never modified."""
    train_x = context.features(model, context.train)
    val_x = context.features(model, context.val) if context.val is not None and len(context.val) else None
    probe = fit_probe(train_x, context.train.labels, val_x, None if val_x is None else context.val.labels,
                      context.num_classes, context.recipe.linear, context.recipe.runtime.seed)
    with torch.no_grad():
        head = model.get_classifier()
        head.weight.copy_(torch.from_numpy(probe.weight))
        head.bias.copy_(torch.from_numpy(probe.bias))
    info = {"probe_c": probe.c, "probe_selection": probe.selection, "probe_scores": {str(c): s for c, s in probe.scores.items()}}
    context.run.log(event="probe", **info)
    context.reporter.print(f"linear probe: C={probe.c} chosen by {probe.selection} ({info['probe_scores']})")
    return probe, info


@register_route("linear")
def linear(context: Context) -> RouteResult:
    model = context.model()
    before = weights_hash(model)
    probe, info = probe_model(context, model)
    info["backbone_unchanged"] = weights_hash(model) == before
    test_logits = None
    if context.test is not None:
        test_x = context.features(model, context.test)
        test_logits = test_x @ probe.weight.T + probe.bias
    return RouteResult(model, info, test_logits=test_logits)
