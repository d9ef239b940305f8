"""graft: every transfer-learning route for small image datasets, run side by side and explained.

The API mirrors the CLI: ``graft.fit``, ``graft.evaluate``, ``graft.predict``, ``graft.export``,
``graft.load_run``, ``graft.demo``.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {"fit", "evaluate", "predict", "export", "load_run", "Recipe", "Run", "GraftError", "demo"}


def __getattr__(name: str) -> Any:  # lazy: `import graft` stays cheap and side-effect free
    if name == "demo":
        from graft.demo import demo

        return demo
    if name in _API:
        from graft import api

        return getattr(api, name)
    raise AttributeError(f"module 'graft' has no attribute {name!r}")


__all__ = sorted(_API)
