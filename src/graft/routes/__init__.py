"""One registry of routes (:mod:`graft.routes.registry`); importing this package registers every route.

A route is one module with one ``@register_route(...)`` fit function ``route(context) -> RouteResult``.
"""
from __future__ import annotations

from graft.routes.context import Context, RouteResult
from graft.routes.registry import REGISTRY, RouteSpec, find_route, get_route, register_route, route_names

# each module registers its routes on import (the order is the listing order of `graft fit --help`)
from graft.routes import linear, finetune, lpft, scratch, adapt, pseudo, spread, distill, patches, grow, exemplar  # noqa: E402,F401,I001

__all__ = ["Context", "RouteResult", "REGISTRY", "RouteSpec", "find_route", "get_route", "register_route", "route_names"]
