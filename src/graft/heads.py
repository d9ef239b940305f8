"""Adaptation layers: FCa (ReLU, dropout) -> FCb in place of the source classifier (Oquab et al. 2014, sec. 3.2).

The head replaces the backbone's classifier attribute (timm's ``pretrained_cfg['classifier']``), so
``forward_head(pre_logits=True)`` still gives the frozen representation and the optimizer groups and
frozen-backbone checks of the core see it as "the head". A run records the head in ``model.json``
(``meta["head"]``) so :func:`graft.runs.load_run` rebuilds it.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from graft.backbones import head_prefix, init_new_classifier
from graft.errors import GraftError

HeadRestorer = Callable[[nn.Module, dict[str, Any]], nn.Module]
# spec["kind"] -> rebuilds that head on a fresh model; modules with their own heads register here (graft.growth: "grow")
HEAD_KINDS: dict[str, HeadRestorer] = {}


def register_head_kind(kind: str) -> Callable[[HeadRestorer], HeadRestorer]:
    """Register ``restore(model, spec)`` as the way :func:`restore_head` rebuilds heads recorded with ``spec["kind"] == kind``."""

    def decorate(restore: HeadRestorer) -> HeadRestorer:
        HEAD_KINDS[kind] = restore
        return restore

    return decorate


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


@register_head_kind("adapt")
def restore_adaptation_head(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    return attach_head(model, AdaptationHead(model.num_features, spec["outputs"], spec["hidden"], spec["dropout"]))


def restore_head(model: nn.Module, spec: dict[str, Any] | None) -> nn.Module:
    """Rebuild the head a run recorded in ``meta["info"]["head"]`` on ``model`` (no-op for the plain linear classifier)."""
    if not spec:
        return model
    kind = spec.get("kind", "adapt")
    if kind not in HEAD_KINDS:
        raise GraftError(f"head kind '{kind}' in the run's model.json is unknown; known: {', '.join(sorted(HEAD_KINDS))} "
                         "(import the module that registers it, or use the graft version that wrote the run)")
    HEAD_KINDS[kind](model, spec)
    return model
