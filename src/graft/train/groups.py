"""Staged unfreezing: parameter groups from timm's ``group_matcher`` and which of them train when.

A stage is ``new`` (only the new head), ``top-K`` (the head and the top K backbone groups)
or ``all``: the scenarios *New*, *top-k + New*, *All* of Yosinski et al. 2014 / Wang et al. 2017,
generalised to any timm backbone without per-architecture tables.
"""
from __future__ import annotations


from timm.optim import param_groups_weight_decay
from torch import nn

from graft.backbones import head_prefix
from graft.errors import GraftError
from graft.recipe_checks import Stage, parse_stages  # the stage grammar is a recipe value's


def kept_head_names(model: nn.Module) -> set[str]:
    """Parameters inside the classifier that are not new: a grown network's earlier growth and task heads
    (:class:`graft.growth.GrowthHead`). They train like the top backbone group, not as new layers."""
    kept = getattr(model.get_classifier(), "kept_parameter_names", None) if hasattr(model, "get_classifier") else None
    return {head_prefix(model) + n for n in kept()} if kept else set()


def backbone_groups(model: nn.Module) -> list[list[str]]:
    """Backbone parameter names in groups, bottom (stem) to top; the head is excluded.

    From timm's ``group_matcher(coarse=True)`` when the model has one; otherwise by
    parameter order, split at the top-level modules (or their children when there are few).
    Earlier growth of a grown network (:func:`kept_head_names`) joins the top group.
    """
    head = head_prefix(model)
    names = [n for n, _ in model.named_parameters() if not n.startswith(head)]
    if hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        grouped = group_parameters(model, model.group_matcher(coarse=True))
        groups = [[n for n in members if not n.startswith(head)] for _, members in sorted(grouped.items())]
    else:
        groups = _groups_by_order(names)
    groups = [g for g in groups if g]
    kept = kept_head_names(model)
    if kept and groups:
        groups[-1] = groups[-1] + [n for n, _ in model.named_parameters() if n in kept]
    return groups


def _groups_by_order(names: list[str]) -> list[list[str]]:
    for depth in (1, 2, 3, 4):
        keys = [".".join(n.split(".")[:depth]) for n in names]
        if len(dict.fromkeys(keys)) >= 4 or depth == 4:
            break
    groups: dict[str, list[str]] = {}
    for key, name in zip(keys, names):
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def trainable_names(model: nn.Module, stage: Stage, bn_mode: str) -> set[str]:
    """Parameter names that train in ``stage`` (BatchNorm affine excluded when bn_mode='eval')."""
    head = head_prefix(model)
    groups = backbone_groups(model)
    k = stage.top_groups(len(groups))
    names = {n for group in groups[len(groups) - k:] for n in group} if k else set()
    names |= {n for n, _ in model.named_parameters() if n.startswith(head)} - (kept_head_names(model) - names)
    if bn_mode == "eval":
        names -= {f"{m}.{p}" for m, module in model.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)
                  for p, _ in module.named_parameters(recurse=False) if not f"{m}.{p}".startswith(head)}
    return names


def apply_stage(model: nn.Module, trainable: set[str], bn_mode: str) -> None:
    """Set requires_grad and module modes for a stage.

    BatchNorm statistics stay frozen (eval mode) in every layer that does not train, and
    everywhere unless ``bn_mode == 'train'``.
    """
    model.train()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trainable)
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            own = [p for p in module.parameters(recurse=False)]
            frozen_layer = not any(p.requires_grad for p in own) if own else True
            if bn_mode != "train" or frozen_layer:
                module.eval()


def no_decay_names(model: nn.Module) -> set[str]:
    """Trainable parameters that get no weight decay, by timm's rule (``timm.optim.param_groups_weight_decay``):
    1-D parameters (biases, norm scales), names ending in ``.bias``, and what the model lists in its
    ``no_weight_decay()`` (a ViT's position embedding and class token)."""
    listed = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    # any non-zero decay (1.0): with 0 timm puts every parameter in one group, and only the split is read here
    groups = param_groups_weight_decay(model, 1.0, no_weight_decay_list=listed)
    plain = {id(p) for group in groups if group["weight_decay"] == 0.0 for p in group["params"]}
    return {name for name, parameter in model.named_parameters() if id(parameter) in plain}


def optimizer_groups(model: nn.Module, lr: float, backbone_ratio: float, weight_decay: float) -> list[dict]:
    """Four groups: {head, backbone} x {decayed, not decayed (:func:`no_decay_names`)}; only trainable parameters.

    The new head trains at ``lr``, the pretrained backbone at ``lr * backbone_ratio``.
    """
    head = head_prefix(model)
    kept = kept_head_names(model)
    plain = no_decay_names(model)
    buckets: dict[tuple[bool, bool], list] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        buckets.setdefault((name.startswith(head) and name not in kept, name not in plain), []).append(parameter)
    groups = []
    for (is_head, decayed), params in sorted(buckets.items()):
        group_lr = lr if is_head else lr * backbone_ratio
        groups.append({"params": params, "lr": group_lr, "base_lr": group_lr, "weight_decay": weight_decay if decayed else 0.0,
                       "name": ("head" if is_head else "backbone") + ("" if decayed else "_no_decay")})
    return groups
