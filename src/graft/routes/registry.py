"""The route registry: one frozen :class:`RouteSpec` per route, registered when its module is imported
(as timm's ``register_model`` registers architectures). The registry names are the CLI names (DESIGN.md §3).

A route is one module: its fit function ``route(context) -> RouteResult`` under ``@register_route(name, ...)``,
with the flags and optional hooks below. Nothing outside a route's module names the route.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
from torch import nn

from graft.errors import GraftError

if TYPE_CHECKING:  # types only: the context module imports this one
    from graft.console import Reporter
    from graft.data.sources import ImageSet
    from graft.placement import Placement
    from graft.routes.context import Context, RouteResult
    from graft.runs import Run

RouteFn = Callable[["Context"], "RouteResult"]
# (run, images, placement, batch_size, reporter) -> (N, C) class scores of a finished run
ScoreFn = Callable[["Run", "ImageSet", "Placement", int, Optional["Reporter"]], np.ndarray]
# (run, (N, C) scores) -> (N, C) probabilities that `graft predict` reports
ProbabilityFn = Callable[["Run", np.ndarray], np.ndarray]
# (context) -> anything the fit function gets as ``context.prepared``; runs before the run directory exists
PrepareFn = Callable[["Context"], Any]
# (run) -> the module `graft export` writes (its outputs: what `predict` scores), or a GraftError saying why not
ExportFn = Callable[["Run"], nn.Module]


@dataclass(frozen=True)
class RouteSpec:
    """One route: its fit function, its flags and its optional hooks.

    ``pretrained=False``: starts from random weights (scratch). ``unlabeled``: learns from ``--unlabeled`` images.
    ``features_only``: trains only a head on cached frozen features (cheap: `graft compare` runs these first; the
    backbone stays bit-identical). ``min_steps=False``: the head starts trained (LP-FT), so its stages are never
    stretched to ``train.min_steps``. ``grows``: grows a finished run again (`graft grow`). ``compared``: among
    `graft compare`'s default routes for plain single-label data. ``labelled=False``: reads no labels and makes no
    splits (self-supervised pretraining; its run is a backbone, not a classifier of the data's classes).
    ``defaults``: recipe overrides applied before the user's. Hooks (None: the plain classifier's behaviour):
    ``prepare`` runs before the run directory exists (default: build the starting model, so weights that do not
    fit fail first) and hands its result to the fit function; ``score`` a finished run's class scores,
    ``probabilities`` what `predict` reports from them, ``export`` the module that `graft export` writes.
    """

    name: str
    fit: RouteFn
    pretrained: bool = True
    unlabeled: bool = False
    features_only: bool = False
    min_steps: bool = True
    grows: bool = False
    compared: bool = True
    labelled: bool = True
    prepare: Optional[PrepareFn] = None
    defaults: tuple[str, ...] = ()
    score: Optional[ScoreFn] = None
    probabilities: Optional[ProbabilityFn] = None
    export: Optional[ExportFn] = None


REGISTRY: dict[str, RouteSpec] = {}


def register_route(name: str, **flags: Any) -> Callable[[RouteFn], RouteFn]:
    """Decorator: register ``function`` as route ``name`` with :class:`RouteSpec` ``flags`` (returns it unchanged)."""

    def decorate(function: RouteFn) -> RouteFn:
        if name in REGISTRY and REGISTRY[name].fit is not function:
            raise ValueError(f"route '{name}' is registered twice")
        REGISTRY[name] = RouteSpec(name, function, **flags)
        return function

    return decorate


def route_names() -> list[str]:
    """Every registered route, in registration order."""
    return list(REGISTRY)


def find_route(name: Optional[str]) -> Optional[RouteSpec]:
    """The spec of route ``name``, None when no such route is registered (e.g. a run made by `graft pretrain`)."""
    return REGISTRY.get(str(name))


def get_route(name: str) -> RouteSpec:
    """The spec of route ``name``; unknown names are refused with the list of routes."""
    spec = find_route(name)
    if spec is None:
        raise GraftError(f"unknown route '{name}'; choose one of {', '.join(REGISTRY)}")
    return spec


__all__ = ["REGISTRY", "RouteSpec", "RouteFn", "ScoreFn", "ProbabilityFn", "PrepareFn", "ExportFn", "register_route", "route_names", "find_route", "get_route"]
