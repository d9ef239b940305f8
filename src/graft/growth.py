"""Developmental networks: grow a pretrained network in depth and/or width for each new task.

Wang, Ramanan, Hebert, "Growing a Brain: Fine-Tuning by Increasing Model Capacity", CVPR 2017.

*The top representation layer* L_K of a backbone is its last ``nn.Linear`` or ``nn.Conv2d`` outside
the classifier, in registration order; the layer below it (WWA) is the one before that:

- graft's AlexNet-style nets and ``tv:alexnet`` / ``tv:vgg*``: ``fc7`` (lower: ``fc6``), as in the paper;
- timm / torchvision CNNs: the last convolution (MobileNetV2/EfficientNet: ``conv_head`` 320->1280,
  lower: the last block's projection ``conv_pwl``; ResNet: ``layer4[-1]``'s last conv). New channels are
  a convolution of the same geometry on the same input, ReLU, global-average pooled and concatenated
  to the pooled features (sec. 4.2, "units fed by the same input").

Nothing in the backbone changes: forward pre-hooks read the inputs of L_K (and L_K-1), and every new
unit lives in :class:`GrowthHead`, which takes the classifier's place (so graft's loop trains it as the
new layers, at 10x the backbone's learning rate). Right after growing, the old units' activations are
the original network's (the tests check it).

- DA (depth, Fig. 2b): FCa (S units, ReLU, dropout) between the representation and the classifier.
- WA (width, Fig. 2c): S new units beside L_K; old and new groups each L2-normalised and scaled by a
  learnable per-channel gamma (eq. 1-2) when ``normalize``.
- DWA (Fig. 2d): WA, then FCa on the widened representation.
- WWA (Fig. 2e): widen L_K-1 by S/2 and L_K by S; the new top units read old and new lower units.

Continual growth (sec. 5.4, Table 8): each task adds its own width units and its own :class:`TaskHead`;
earlier tasks' heads stay and read the representation as it was when they were learnt.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from torch.nn import functional as F

from graft.backbones import init_new_classifier
from graft.errors import GraftError
from graft.heads import attach_head, register_head_kind

KINDS = ("depth", "width", "both", "width2")


def top_layers(model: nn.Module) -> tuple[str, str]:
    """Names of (L_K, L_K-1): the last two Linear/Conv2d modules outside the classifier."""
    head = model.pretrained_cfg.get("classifier", "classifier") if hasattr(model, "pretrained_cfg") else "classifier"
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
             and not (n == head or n.startswith(head + "."))]
    if len(names) < 2:
        raise GraftError(f"{type(model).__name__}: growing needs at least two Linear/Conv2d layers below the classifier")
    return names[-1], names[-2]


def _units(inputs: int, outputs: int, like: nn.Module, dropout: float) -> nn.Module:
    """New units fed by the input of ``like``: Linear+ReLU+Dropout, or Conv2d of ``like``'s geometry + ReLU."""
    if isinstance(like, nn.Linear):
        return nn.Sequential(nn.Linear(inputs, outputs), nn.ReLU(inplace=True), nn.Dropout(dropout))
    assert isinstance(like, nn.Conv2d)
    return nn.Sequential(nn.Conv2d(inputs, outputs, like.kernel_size, like.stride, like.padding, like.dilation), nn.ReLU(inplace=True))


class Scale(nn.Module):
    """L2-normalise along channels (dim 1), then multiply by a learnable per-channel gamma (eq. 1-2)."""

    def __init__(self, channels: int, gamma: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), float(gamma)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return F.normalize(x, dim=1) * self.gamma.view(shape)


class WidthBranch(nn.Module):
    """S new units beside L_K (``width``), or S/2 beside L_K-1 and S beside L_K reading both (``width2``).

    ``forward(inputs)`` takes the captured inputs {"top": (B, D_in[, H, W]), "lower": ...} and returns
    (B, S) new top activations (conv maps are global-average pooled).
    """

    def __init__(self, spec: dict[str, Any], top: nn.Module, lower: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        units, dropout = spec["units"], spec["dropout"]
        self.lower = None
        top_inputs = spec["top_inputs"]
        if spec["kind"] == "width2":
            half = max(units // 2, 1)
            self.lower = _units(spec["lower_inputs"], half, lower, dropout)
            self.lower_scales = nn.ModuleList([Scale(top_inputs, spec["gamma"]), Scale(half, spec["gamma"])]) if spec["normalize"] else None
            top_inputs += half
        self.top = _units(top_inputs, units, top, dropout)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = inputs["top"]
        if self.lower is not None:
            extra = self.lower(inputs["lower"])
            if extra.ndim == 4 and extra.shape[2:] != x.shape[2:]:
                # a pooling step sits between the two top convs (VGG-style nets): pool the new maps the same way
                extra = F.adaptive_max_pool2d(extra, x.shape[2:])
            parts = [x, extra] if self.lower_scales is None else [s(p) for s, p in zip(self.lower_scales, (x, extra))]
            x = torch.cat(parts, 1)
        out = self.top(x)
        return out.mean(dim=(2, 3)) if out.ndim == 4 else out


class TaskHead(nn.Module):
    """One task's head: reads old features + the width branches ``reads``; optional gamma scales, FCa, classifier."""

    def __init__(self, spec: dict[str, Any], features: int, branch_units: list[int]) -> None:
        super().__init__()
        self.spec = spec
        groups = [features] + [branch_units[i] for i in spec["reads"]]
        width_norm = spec["normalize"] and len(groups) > 1
        self.scales = nn.ModuleList([Scale(g, spec["gamma"]) for g in groups]) if width_norm else None
        dim = sum(groups)
        self.depth = None
        if spec["depth"]:
            self.depth = nn.Sequential(nn.Linear(dim, spec["depth"]), nn.ReLU(inplace=True), nn.Dropout(spec["dropout"]))
            dim = spec["depth"]
        self.depth_scale = Scale(dim, spec["gamma"]) if spec["depth"] and spec["normalize"] and len(groups) == 1 else None
        self.classifier = nn.Linear(dim, spec["outputs"])

    def representation(self, groups: list[torch.Tensor]) -> torch.Tensor:
        """(B, D + sum S) concatenated (normalised, scaled) groups, then FCa when grown in depth."""
        if self.scales is not None:
            groups = [scale(g) for scale, g in zip(self.scales, groups)]
        x = torch.cat(groups, 1) if len(groups) > 1 else groups[0]
        if self.depth is not None:
            x = self.depth(x)
            if self.depth_scale is not None:
                x = self.depth_scale(x)
        return x

    def forward(self, groups: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.representation(groups))


class GrowthHead(nn.Module):
    """All units added by growing, in the classifier's place: width branches and one head per task.

    ``forward(features)`` gives the ``active`` task's logits (B, C_task); :meth:`task_logits` all tasks'.
    """

    def __init__(self, spec: dict[str, Any], model: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.active = spec.get("active", len(spec["tasks"]) - 1)
        top, lower = model.get_submodule(spec["top"]), model.get_submodule(spec["lower"])
        self.branches = nn.ModuleList([WidthBranch(b, top, lower) for b in spec["branches"]])
        units = [b["units"] for b in spec["branches"]]
        self.tasks = nn.ModuleList([TaskHead(t, spec["features"], units) for t in spec["tasks"]])
        self._inputs: dict[str, torch.Tensor] = {}
        self._hooks = [top.register_forward_pre_hook(self._capture_top), lower.register_forward_pre_hook(self._capture_lower)]

    # bound methods (not closures): copy.deepcopy of the model then hooks into the copy's own head
    def _capture_top(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self._inputs["top"] = args[0]

    def _capture_lower(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self._inputs["lower"] = args[0]

    def task_logits(self, features: torch.Tensor, tasks: Optional[list[int]] = None) -> list[torch.Tensor]:
        """Logits of each task in ``tasks`` (default all) from the old pooled features (B, D) and the captured inputs."""
        tasks = list(range(len(self.tasks))) if tasks is None else tasks
        needed = sorted({i for t in tasks for i in self.tasks[t].spec["reads"]})
        new = {i: self.branches[i](self._inputs) for i in needed}
        return [self.tasks[t]([features] + [new[i] for i in self.tasks[t].spec["reads"]]) for t in tasks]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self._inputs["features"] = features  # kept for task_logits of other tasks on the same batch (LwF)
        return self.task_logits(features, [self.active])[0]

    def kept_parameter_names(self) -> set[str]:
        """Parameters grown for earlier tasks (relative names): trained like the top backbone group, not as new layers."""
        newest = len(self.tasks) - 1
        new_branches = set(self.tasks[newest].spec["reads"]) - {i for t in self.tasks[:newest] for i in t.spec["reads"]}
        kept = {f"tasks.{t}.{n}" for t in range(newest) for n, _ in self.tasks[t].named_parameters()}
        kept |= {f"branches.{b}.{n}" for b in range(len(self.branches)) if b not in new_branches for n, _ in self.branches[b].named_parameters()}
        return kept

    def current_spec(self) -> dict[str, Any]:
        return {**self.spec, "active": self.active}


def _captured_sizes(model: nn.Module, top: str, lower: str, image_size: int) -> dict[str, int]:
    """Channels of L_K's and L_K-1's inputs and of the pooled features, from one forward pass."""
    seen: dict[str, int] = {}
    hooks = [model.get_submodule(name).register_forward_pre_hook(lambda m, a, key=key: seen.__setitem__(key, a[0].shape[1]))
             for key, name in (("top_inputs", top), ("lower_inputs", lower))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            features = model.forward_head(model.forward_features(torch.zeros(1, 3, image_size, image_size)), pre_logits=True)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    if features.ndim != 2:
        raise GraftError(f"{type(model).__name__}: pooled features have shape {tuple(features.shape)}; growing needs (B, D)")
    return {**seen, "features": features.shape[1]}


def grow(model: nn.Module, kind: str, outputs: int, units: Optional[int], depth_units: Optional[int], normalize: bool,
         gamma: float, dropout: float, image_size: int, task: str = "task", keep_classifier: Optional[str] = None,
         head_init: str = "zeros") -> GrowthHead:
    """Grow ``model`` in place for a new task of ``outputs`` classes; returns its :class:`GrowthHead`.

    A :class:`GrowthHead` keeps all its earlier tasks. A plain Linear classifier is dropped, or, with
    ``keep_classifier`` (its task's name), kept with its weights as task 0 (continual growth from a
    source run). ``units`` (S) defaults to half of the pooled width D (the paper's 2048 of 4096),
    ``depth_units`` to D. The new task's classifier starts as ``head_init`` (:func:`graft.backbones.init_new_classifier`);
    new units keep PyTorch's initialisation (units at zero behind a ReLU would never train).
    """
    if kind not in KINDS:
        raise GraftError(f"unknown growth '{kind}'; choose one of {', '.join(KINDS)}")
    head = model.get_classifier()
    previous = head.current_spec() if isinstance(head, GrowthHead) else None
    if previous is None:
        top, lower = top_layers(model)
        spec: dict[str, Any] = {"kind": "grow", "top": top, "lower": lower, "branches": [], "tasks": [],
                                **_captured_sizes(model, top, lower, image_size)}
        if keep_classifier is not None:
            if not isinstance(head, nn.Linear):
                raise GraftError(f"continual growth needs a run whose classifier is one Linear layer, not {type(head).__name__}")
            spec["tasks"].append({"name": keep_classifier, "outputs": head.out_features, "reads": [], "depth": 0,
                                  "normalize": False, "gamma": 1.0, "dropout": 0.0})
    else:
        for hook in head._hooks:
            hook.remove()
        spec = {**previous, "branches": list(previous["branches"]), "tasks": list(previous["tasks"])}
    features = spec["features"]
    units = units or max(features // 2, 1)
    reads = [i for t in spec["tasks"][-1:] for i in t["reads"]]  # the representation as the last task left it
    if kind in ("width", "both", "width2"):
        spec["branches"].append({"kind": "width2" if kind == "width2" else "width", "units": units, "dropout": dropout,
                                 "normalize": normalize, "gamma": gamma, "top_inputs": spec["top_inputs"],
                                 "lower_inputs": spec["lower_inputs"]})
        reads = reads + [len(spec["branches"]) - 1]
    depth = (depth_units or features) if kind in ("depth", "both") else 0
    spec["tasks"].append({"name": task, "outputs": outputs, "reads": reads, "depth": depth, "normalize": normalize,
                          "gamma": gamma, "dropout": dropout})
    spec["active"] = len(spec["tasks"]) - 1
    new_head = GrowthHead(spec, model)
    init_new_classifier(new_head.tasks[-1].classifier, head_init)
    if previous is not None:
        new_head.load_state_dict(head.state_dict(), strict=False)  # earlier branches and task heads keep their weights
    elif keep_classifier is not None:
        new_head.tasks[0].classifier.load_state_dict(head.state_dict())
    attach_head(model, new_head)
    was_training = model.training
    try:  # one forward pass now: a growth that does not fit this backbone fails before any training
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size))
    finally:
        model.train(was_training)
    return new_head


@register_head_kind("grow")
def restore_growth(model: nn.Module, spec: dict[str, Any]) -> GrowthHead:
    """Rebuild the grown head a run recorded (``meta["info"]["head"]``), before loading its weights."""
    head = GrowthHead(spec, model)
    attach_head(model, head)
    return head


def all_task_logits(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(active task's logits, every task's logits) of ``images`` in one backbone pass; a plain model has one task."""
    logits = model(images)
    head = model.get_classifier()
    if isinstance(head, GrowthHead):
        return logits, head.task_logits(head._inputs["features"])
    return logits, [logits]


class LwfStep:
    """Cross-entropy on the new task plus Learning without Forgetting (Li & Hoiem 2016) for the earlier tasks.

    The earlier tasks' outputs on the new task's images come from a frozen copy of the network taken before
    growing (``teacher``); each earlier task adds ``weight * T^2 * KL(softmax(teacher/T) || softmax(student/T))``.
    Without augmentation this equals recording the outputs once before training, as in the paper.
    A step of graft's training loop (:mod:`graft.train.steps`); it lives here because it reads every task's
    logits of a grown network.
    """

    def __init__(self, teacher: nn.Module, old_tasks: list[int], weight: float, temperature: float = 2.0) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.old_tasks = old_tasks
        self.weight = weight
        self.temperature = temperature

    def __call__(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], train: bool = True) -> dict[str, torch.Tensor]:
        images, labels = batch
        with torch.no_grad():
            _, targets = all_task_logits(self.teacher, images)
        logits, outputs = all_task_logits(model, images)
        t = self.temperature
        distill = sum(F.kl_div(F.log_softmax(outputs[i] / t, 1), F.softmax(targets[i] / t, 1), reduction="batchmean") * t * t
                      for i in self.old_tasks)
        cross_entropy = F.cross_entropy(logits, labels)
        return {"loss": cross_entropy + self.weight * distill, "logits": logits, "labels": labels, "distill": distill.detach()}
