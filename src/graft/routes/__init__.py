"""One registry of routes; the registry names are the CLI names (DESIGN.md §3).

A route is one function ``route(context) -> RouteResult`` in its own module.
"""
from __future__ import annotations

import importlib
from typing import Callable

from graft.errors import GraftError
from graft.routes.context import Context, RouteResult

RouteFn = Callable[[Context], RouteResult]
ROUTES: dict[str, RouteFn] = {}
USES_PRETRAINED: dict[str, bool] = {}  # False: the route starts from random weights (scratch)
USES_UNLABELED: dict[str, bool] = {}  # True: the route learns from --unlabeled images (pseudo, distill)
# True: only a head trains, on cached frozen features (no backbone training): `graft compare` runs these first
FEATURES_ONLY: dict[str, bool] = {}
# False: the route's head starts trained (lpft's probe), so its epochs are never stretched to train.min_steps
USES_MIN_STEPS: dict[str, bool] = {}
_MODULES = ("linear", "finetune", "lpft", "scratch", "adapt", "pseudo", "distill", "patches", "grow")


def register_route(name: str, pretrained: bool = True, unlabeled: bool = False,
                   features_only: bool = False, min_steps: bool = True) -> Callable[[RouteFn], RouteFn]:
    """Register ``function`` as route ``name``; ``pretrained=False`` for routes that start from random weights,
    ``unlabeled=True`` for routes that use ``--unlabeled`` images, ``features_only=True`` for routes that train
    only a head on cached features (cheap: `graft compare` runs them first), ``min_steps=False`` for routes whose
    head starts trained (their stages are not stretched to ``train.min_steps``)."""

    def decorate(function: RouteFn) -> RouteFn:
        ROUTES[name] = function
        USES_PRETRAINED[name] = pretrained
        USES_UNLABELED[name] = unlabeled
        FEATURES_ONLY[name] = features_only
        USES_MIN_STEPS[name] = min_steps
        return function

    return decorate


def route_names() -> list[str]:
    for module in _MODULES:
        importlib.import_module(f"graft.routes.{module}")
    return list(ROUTES)


def get_route(name: str) -> RouteFn:
    if name not in route_names():
        raise GraftError(f"unknown route '{name}'; choose one of {', '.join(ROUTES)}")
    return ROUTES[name]


__all__ = ["Context", "RouteResult", "ROUTES", "USES_PRETRAINED", "USES_UNLABELED", "FEATURES_ONLY", "USES_MIN_STEPS", "get_route", "register_route",
           "route_names"]
