"""Route ``pseudo``: a trained model labels the unlabelled images; confident ones join training (DESIGN.md route 10).

Lee 2013, "Pseudo-Label": the pseudo-labelled images are trained on beside the labelled ones with weight
α(t) ramped from 0 to α_f. The labeller is ``--teacher`` (a finished run), or else a model first trained on
the labels alone. Each round starts a fresh student from the backbone's weights (so a round does not just
confirm its own earlier mistakes) and the next round is labelled by the improved student.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from graft.data.sources import ImageSet
from graft.data.unlabeled import hidden_labels
from graft.errors import GraftError
from graft.evaluation import predict_logits
from graft.recipe import PseudoConfig
from graft.routes.registry import register_route
from graft.routes.context import Context, RouteResult
from graft.routes.linear import probe_model
from graft.train.groups import Stage, parse_stages
from graft.train.loop import LoopSetup, train_stages
from graft.train.semi import ConsistencyStep, SemiStep, Selection, pseudo_weight, select_pseudo_labels


def require_unlabeled(context: Context) -> ImageSet:
    if context.unlabeled is None:
        raise GraftError(f"route {context.recipe.route} needs unlabelled images; pass --unlabeled DIR_OR_NPZ")
    return context.unlabeled


def student_plan(context: Context, model: nn.Module) -> tuple[Context, list[Stage], dict[str, Any]]:
    """How a student trains: from random weights like ``scratch`` (one stage, one learning rate), else like
    ``lpft`` (graft's default: a linear probe on the labelled images, then the recipe's non-``new`` stages)."""
    m = context.recipe.model
    if not (m.weights or m.pretrained or m.backbone.startswith("run:")):
        epochs = sum(s.epochs for s in parse_stages(context.recipe.train.stages))
        recipe = dataclasses.replace(context.recipe, train=dataclasses.replace(context.recipe.train, backbone_lr_ratio=1.0))
        return dataclasses.replace(context, recipe=recipe), [Stage("all", epochs)], {"student_start": "random"}
    _, info = probe_model(context, model, pool_validation=False)
    stages = [s for s in parse_stages(context.recipe.train.stages) if s.train != "new"]
    return context, stages, {"student_start": "pretrained, linear probe", **info}


FEW_SELECTED = 0.05  # under this share of the pool the run warns: pseudo-labelling then barely differs from labels only


def choose(probabilities: np.ndarray, config: PseudoConfig, classes: list[str], hidden: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """:func:`select_pseudo_labels` plus what the run records: count and threshold per class, a warning when under
    5 % of the pool is chosen (and why), and with hidden labels the precision."""
    selection = select_pseudo_labels(probabilities, config.threshold, config.top_k, config.balance, config.per_class)
    indices, labels = selection.indices, selection.labels
    counts = np.bincount(labels, minlength=len(classes))
    record: dict[str, Any] = {"selected": int(len(indices)), "of": int(len(probabilities)),
                              "per_class": {c: int(n) for c, n in zip(classes, counts)},
                              "thresholds": {c: round(float(t), 4) for c, t in zip(classes, selection.thresholds)},
                              "mean_confidence": round(selection.mean_confidence, 4)}
    if len(probabilities) and len(indices) < FEW_SELECTED * len(probabilities):
        record["warning"] = few_selected_reason(selection, config, len(probabilities))
    if hidden is not None:
        correct = hidden[indices] == labels
        record["precision"] = round(float(correct.mean()), 4) if len(indices) else None
        record["precision_per_class"] = {c: (round(float(correct[labels == i].mean()), 4) if counts[i] else None)
                                         for i, c in enumerate(classes)}
    return indices, labels, record


def few_selected_reason(selection: Selection, config: PseudoConfig, pool: int) -> str:
    """Why few pseudo-labels were chosen, and which setting to change."""
    head = f"only {len(selection.indices)} of {pool} unlabelled images were pseudo-labelled (under {FEW_SELECTED:.0%})"
    candidates = int(selection.candidates.sum())
    if candidates < FEW_SELECTED * pool:
        return (f"{head}: the labeller reaches its class thresholds ({float(selection.thresholds.min()):.2f}-"
                f"{float(selection.thresholds.max()):.2f}) on {candidates} images (its mean confidence is "
                f"{selection.mean_confidence:.2f}); lower pseudo.threshold or leave it unset (self-adaptive)")
    limits = [f"pseudo.top_k={config.top_k}"] if config.top_k is not None else []
    limits += ["pseudo.balance=true (every class cut to the class with the fewest candidates, "
               f"{int(selection.candidates[selection.candidates > 0].min()) if candidates else 0})"] if config.balance else []
    return f"{head}: {candidates} were above their thresholds, cut by {' and '.join(limits)}; raise or unset them"


def with_labels(images: ImageSet, labels: np.ndarray) -> ImageSet:
    """A copy of ``images`` carrying ``labels`` (pseudo-labels; -1: not chosen)."""
    return dataclasses.replace(images, labels=labels.astype(np.int64))


def probabilities_of(model: nn.Module, pre, images: ImageSet, context: Context) -> np.ndarray:
    logits = predict_logits(model, images, pre, context.recipe.data.batch_size * 2, context.reporter, placement=context.placement)
    return torch.softmax(torch.from_numpy(logits).float(), 1).numpy()


def train_student(context: Context, unlabeled: Optional[ImageSet], step: Optional[SemiStep],
                  part: str = "student") -> tuple[nn.Module, list[dict[str, Any]], dict[str, Any]]:
    """A fresh student (``student_plan``) trained through graft's one loop on the labelled and ``unlabeled`` images.

    Routes that train several students in a row name each ``part``: a finished part is kept in the run and a
    resumed run loads it instead of training it again; the run's checkpoint belongs to the first unfinished part.
    """
    model = context.model()
    saved = context.run.load_part(part)
    if saved is not None:
        weights, meta = saved
        model.load_state_dict(weights)
        context.reporter.print(f"{part}: finished before the interruption, loaded")
        return model, meta["history"], meta["info"]
    context, stages, info = student_plan(context, model)
    # the run's checkpoint belongs to this part once the parts before it are saved; a probed head (LP-FT plan) is not stretched
    setup = LoopSetup.of(context, context.preprocessing(model), use_min_steps=info["student_start"] == "random",
                         checkpoint=context.run.load_checkpoint() if context.checkpoint is not None else None)
    history = train_stages(setup, model, stages, context.train, context.val, step=step, unlabeled=unlabeled)
    context.run.save_part(part, model, {"history": history, "info": info})
    return model, history, info


@register_route("pseudo", unlabeled=True)
def pseudo(context: Context) -> RouteResult:
    unlabeled = require_unlabeled(context)
    config = context.recipe.pseudo
    if config.rounds < 1:
        raise GraftError(f"pseudo.rounds={config.rounds}: give at least 1 round")
    if config.method == "consistency":
        return consistency(context, unlabeled)
    hidden = hidden_labels(context.recipe.data.unlabeled, context.train.classes) if config.audit else None
    classes = context.train.classes
    history: list[dict[str, Any]] = []
    info: dict[str, Any] = {"rounds": []}
    if context.recipe.distill.teacher:
        from graft.teacher import load_teacher

        teacher = load_teacher(context.recipe.distill.teacher, classes)
        labeller, labeller_pre, info["labeller"] = teacher.model, teacher.preprocessing, f"teacher {teacher.name}"
    else:
        context.reporter.print("round 0: training on the labelled images alone, to label the unlabelled ones")
        labeller, history, _ = train_student(context, None, None, part="round0")
        labeller_pre, info["labeller"] = context.preprocessing(labeller), "the model trained on the labels alone"
    weight = partial(pseudo_weight, alpha_f=config.alpha_f, start=config.ramp_start, end=config.ramp_end)
    model = labeller
    for round_number in range(1, config.rounds + 1):
        indices, labels, record = choose(probabilities_of(labeller, labeller_pre, unlabeled, context), config, classes, hidden)
        record["round"] = round_number
        context.run.log(event="pseudo_labels", **record)
        if "warning" in record:
            info.setdefault("warnings", []).append(f"round {round_number}: {record['warning']}")
            context.reporter.print(f"[yellow]warning[/]: round {round_number}: {record['warning']}")
        context.reporter.print(f"round {round_number}: {record['selected']} of {record['of']} unlabelled images pseudo-labelled "
                               f"{record['per_class']}" + (f", precision {record['precision']}" if "precision" in record else ""))
        chosen = unlabeled.subset(indices)
        chosen = with_labels(chosen, labels) if len(indices) else None
        model, round_history, start = train_student(context, chosen, SemiStep(weight=weight, label_smoothing=context.recipe.train.label_smoothing),
                                                    part=f"round{round_number}")
        history += [{**h, "round": round_number} for h in round_history]
        info["rounds"].append(record)
        info.update(start)
        labeller, labeller_pre = model, context.preprocessing(model)
    return RouteResult(model, info, history)


def consistency(context: Context, unlabeled: ImageSet) -> RouteResult:
    """``pseudo.method=consistency``: FixMatch (Sohn et al. 2020) in graft's one loop, from the pretrained backbone
    planned as ``lpft`` (a probe, then the recipe's stages); no labeller, no rounds (:class:`ConsistencyStep`)."""
    config = context.recipe.pseudo
    if context.recipe.distill.teacher:
        raise GraftError("pseudo.method=consistency labels the unlabelled images with the model itself; drop --teacher "
                         "(or use pseudo.method=labels to have the teacher label them)")
    step = ConsistencyStep(context.num_classes, config.threshold, config.per_class, config.consistency_weight,
                           label_smoothing=context.recipe.train.label_smoothing)
    model, history, info = train_student(context, unlabeled, step, part="consistency")
    masked, seen = step.masked
    info = {**info, "method": "consistency (FixMatch)", "unlabelled_used": round(masked / seen, 4) if seen else None,
            "final_mean_confidence": round(step.mean_top, 4)}
    context.reporter.print(f"consistency: {info['unlabelled_used']:.1%} of the unlabelled views seen passed their class threshold"
                           if seen else "consistency: no unlabelled batch was drawn")
    return RouteResult(model, info, history)
