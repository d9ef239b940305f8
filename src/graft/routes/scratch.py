"""Route ``scratch``: the same network from random initialisation, every layer at one learning rate (the baseline)."""
from __future__ import annotations

import dataclasses

from graft.routes.registry import register_route
from graft.routes.context import Context, RouteResult
from graft.routes.finetune import run_stages
from graft.train.groups import Stage, parse_stages


@register_route("scratch", pretrained=False)
def scratch(context: Context) -> RouteResult:
    epochs = sum(s.epochs for s in parse_stages(context.recipe.train.stages))
    recipe = dataclasses.replace(context.recipe, train=dataclasses.replace(context.recipe.train, backbone_lr_ratio=1.0))
    context = dataclasses.replace(context, recipe=recipe)
    return run_stages(context, context.model(), [Stage("all", epochs)])
