"""Route ``finetune``: new head, lower backbone learning rate, staged unfreezing (DESIGN.md route 2)."""
from __future__ import annotations

from graft.routes.registry import get_route, register_route
from graft.routes.context import Context, RouteResult
from graft.train.groups import parse_stages
from graft.train.loop import train_stages


def run_stages(context: Context, model, stages) -> RouteResult:
    """Train ``model`` through ``stages`` in graft's one loop; stretched to ``train.min_steps`` unless the route is
    registered with ``min_steps=False``."""

    history = train_stages(context.fabric, model, stages, context.train, context.val, context.preprocessing(model),
                           context.recipe, context.run, context.reporter, callbacks=context.callbacks,
                           checkpoint=context.checkpoint, channels_last=context.recipe.model.channels_last, use_min_steps=get_route(context.recipe.route).min_steps)
    return RouteResult(model, {"stages": [s.__dict__ for s in stages]}, history)


@register_route("finetune")
def finetune(context: Context) -> RouteResult:
    return run_stages(context, context.model(), parse_stages(context.recipe.train.stages))
