"""graft: every transfer-learning route for small image datasets, run side by side and explained.

The API mirrors the CLI: ``graft.fit``, ``graft.grow``, ``graft.evaluate``, ``graft.predict``, ``graft.export``,
``graft.load_run``, ``graft.demo``, ``graft.pretrain``, ``graft.evaluate_features``, ``graft.scenes``,
``graft.analyze``, ``graft.compare``, ``graft.advise``.
"""
from __future__ import annotations

from typing import Any

from graft.version import __version__  # noqa: F401 - graft.__version__

_API = {"fit", "grow", "evaluate", "predict", "export", "load_run", "Recipe", "Run", "GraftError", "demo", "pretrain", "evaluate_features",
        "scenes", "analyze", "compare", "advise", "StopTraining"}


def __getattr__(name: str) -> Any:  # lazy: `import graft` stays cheap and side-effect free
    if name == "demo":
        from graft.demonstration import demo

        return demo
    if name == "pretrain":
        from graft.pretraining import pretrain

        return pretrain
    if name == "evaluate_features":  # `graft.features` is the feature-cache module
        from graft.protocols import evaluate_features

        return evaluate_features
    if name in _API:
        from graft import api

        return getattr(api, name)
    raise AttributeError(f"module 'graft' has no attribute {name!r}")


__all__ = sorted(_API)
