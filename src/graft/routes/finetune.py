"""Route ``finetune``: new head, lower backbone learning rate, staged unfreezing (DESIGN.md route 2)."""
from __future__ import annotations

from graft.routes.registry import get_route, register_route
from graft.routes.context import Context, RouteResult
from graft.train.groups import parse_stages
from graft.train.loop import LoopSetup, train_stages


def run_stages(context: Context, model, stages) -> RouteResult:
    """Train ``model`` through ``stages`` in graft's one loop; stretched to ``train.min_steps`` unless the route is
    registered with ``min_steps=False``."""

    setup = LoopSetup.of(context, context.preprocessing(model), use_min_steps=get_route(context.recipe.route).min_steps)
    history = train_stages(setup, model, stages, context.train, context.val)
    return RouteResult(model, {"stages": [s.__dict__ for s in stages]}, history)


@register_route("finetune")
def finetune(context: Context) -> RouteResult:
    return run_stages(context, context.model(), parse_stages(context.recipe.train.stages))
