"""Adaptation layers: FCa (ReLU, dropout) -> FCb in place of the source classifier (Oquab et al. 2014, sec. 3.2).

The head replaces the backbone's classifier attribute (timm's ``pretrained_cfg['classifier']``), so
``forward_head(pre_logits=True)`` still gives the frozen representation and the optimizer groups and
frozen-backbone checks of the core see it as "the head". A run records the head in ``model.json``
(``meta["head"]``) so :func:`graft.runs.load_run` rebuilds it.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from graft.backbones import head_prefix, init_new_classifier


class AdaptationHead(nn.Sequential):
    """(B, D) features -> FCa (D -> hidden) -> ReLU -> Dropout -> FCb (hidden -> outputs) -> (B, outputs) logits."""

    def __init__(self, features: int, outputs: int, hidden: int = 2048, dropout: float = 0.5, head_init: str = "zeros") -> None:
        super().__init__(nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, outputs))
        init_new_classifier(self[-1], head_init)  # FCb starts small; FCa keeps PyTorch's init (a zero FCa would never train)
        self.spec = {"kind": "adapt", "hidden": hidden, "dropout": dropout, "outputs": outputs}


def attach_head(model: nn.Module, head: nn.Module) -> nn.Module:
    """Put ``head`` where ``model``'s classifier is (nested names such as ``head.fc`` included); returns ``model``."""
    path = head_prefix(model)[:-1].split(".")
    parent = model.get_submodule(".".join(path[:-1])) if len(path) > 1 else model
    setattr(parent, path[-1], head)
    return model


def restore_head(model: nn.Module, spec: dict[str, Any] | None) -> nn.Module:
    """Rebuild the head a run recorded in ``meta["head"]`` (no-op for the plain linear classifier)."""
    if not spec:
        return model
    if spec.get("kind") == "grow":  # a developmental network (graft.growth)
        from graft.growth import restore_growth

        restore_growth(model, spec)
        return model
    return attach_head(model, AdaptationHead(model.num_features, spec["outputs"], spec["hidden"], spec["dropout"]))
