"""Routes ``grow-depth`` (DA), ``grow-width`` (WA), ``grow-both`` (DWA), ``grow-width2`` (WWA) (DESIGN.md route 8).

Wang, Ramanan, Hebert, "Growing a Brain", CVPR 2017: grow the pretrained network (:mod:`graft.growth`),
then train it in one scenario (``grow.train``: new / top-1 / top-2 / all) in graft's one loop, new layers at
10x the pretrained layers' learning rate. With ``grow.previous`` (``graft grow RUN DATA``) the previous run is
grown again: every earlier task keeps its head, is evaluated after the step (accuracy matrix, forgetting),
and with ``grow.lwf > 0`` is kept by a distillation term (Li & Hoiem 2016).
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Optional

from torch import nn

from graft.errors import GraftError
from graft.growth import GrowthHead, LwfStep, grow
from graft.placement import Placement
from graft.recipe import Recipe, TrainConfig
from graft.routes.registry import register_route
from graft.routes.context import Context, RouteResult
from graft.train.groups import Stage
from graft.train.loop import LoopSetup, train_stages

DEFAULT_GROW_ROUTE = "grow-width"  # the route `graft grow` uses on a run that was not grown before
# the paper's fine-tuning recipe (sec. 5, implementation details); the bench's fine-tune baseline uses the same
PAPER_TRAIN: dict[str, Any] = {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "schedule": "step", "step_gamma": 0.1,
                               "warmup_epochs": 0.0, "label_smoothing": 0.0, "backbone_lr_ratio": 0.1,
                               "min_steps": 0}


def paper_train(recipe: Recipe) -> TrainConfig:
    """The train section the grow routes use: the paper's recipe, or ``train`` as given when ``grow.recipe == 'train'``."""
    config = recipe.grow
    if config.recipe == "train":
        return recipe.train
    step = config.step_epochs or max(1, (2 * config.epochs) // 3)
    return dataclasses.replace(recipe.train, lr=config.lr, step_epochs=step, **PAPER_TRAIN)


def task_name(data: Optional[str], taken: list[str]) -> str:
    name = Path(str(data)).stem if data else "task"
    return name if name not in taken else f"{name}-{len(taken)}"


def _start(context: Context) -> tuple[nn.Module, Optional[dict[str, Any]]]:
    """The network to grow: the recipe's backbone, or (continual growth) the previous run with all its heads."""
    previous = context.recipe.grow.previous
    if not previous:
        return context.model(), None
    from graft.runs import load_run

    run = load_run(previous)
    if run.meta.get("multilabel"):
        raise GraftError(f"{previous}: continual growth needs a single-label run")
    return run.model.train(), run.meta


def _tasks_so_far(meta: dict[str, Any]) -> tuple[list[dict[str, Any]], list[list[Optional[float]]]]:
    """Earlier tasks (name, classes, recipe, preprocessing) and the accuracy matrix so far, from a run's meta."""
    info = meta.get("info", {})
    if "tasks" in info:
        return info["tasks"], info["accuracy_matrix"]
    task = {"name": task_name(meta["recipe"]["data"]["train"], []), "classes": meta["classes"], "recipe": meta["recipe"],
            "preprocessing": meta["preprocessing"]}
    return [task], [[meta.get("metrics", {}).get("test_accuracy")]]


def evaluate_tasks(model: nn.Module, tasks: list[dict[str, Any]], reporter: Any, placement: Placement = Placement()) -> list[Optional[float]]:
    """Test accuracy of every task's head on that task's test split (rebuilt from its recipe; None if it had none)."""
    from graft.console import Reporter
    from graft.data.split import make_splits
    from graft.data.transforms import Preprocessing
    from graft.evaluation import evaluate_model

    head = model.get_classifier()
    active, accuracies = head.active, []
    for index, task in enumerate(tasks):
        _, _, test = make_splits(Recipe.from_dict(task["recipe"]), Reporter(quiet=True))
        if test is None or not len(test):
            accuracies.append(None)
            continue
        head.active = index
        accuracies.append(evaluate_model(model, test, Preprocessing.from_dict(task["preprocessing"]), placement=placement).accuracy)
        reporter.print(f"  task {index} {task['name']}: test accuracy {accuracies[-1]:.4f}")
    head.active = active
    return accuracies


def forgetting(matrix: list[list[Optional[float]]]) -> list[Optional[float]]:
    """Per earlier task: accuracy right after learning it minus accuracy now (the last row)."""
    last = matrix[-1]
    return [None if matrix[j][j] is None or last[j] is None else matrix[j][j] - last[j] for j in range(len(matrix) - 1)]


def grow_route(context: Context, kind: str) -> RouteResult:
    recipe, config = context.recipe, context.recipe.grow
    stage = Stage(config.train, config.epochs)  # checked when the recipe was read
    model, previous = _start(context)
    pre = context.preprocessing(model)
    tasks, matrix = _tasks_so_far(previous) if previous else ([], [])
    name = task_name(recipe.data.train, [t["name"] for t in tasks])
    teacher = copy.deepcopy(model).eval() if previous and config.lwf > 0 else None
    normalize = config.normalize if config.normalize is not None else kind != "depth"
    keep = tasks[0]["name"] if previous and not isinstance(model.get_classifier(), GrowthHead) else None
    head = grow(model, kind, context.num_classes, config.units, config.depth_units, normalize, config.gamma, config.dropout,
                pre.size, task=name, keep_classifier=keep, head_init=recipe.model.head_init)
    step = LwfStep(teacher, list(range(len(head.tasks) - 1)), config.lwf, config.lwf_temperature) if teacher is not None else None
    trained = dataclasses.replace(recipe, train=paper_train(recipe))
    context.reporter.print(f"{kind}: {sum(p.numel() for p in head.parameters()):,} parameters in new units and heads; "
                           f"scenario {stage.train}, normalisation {'on' if normalize else 'off'}")
    history = train_stages(LoopSetup.of(context, pre, recipe=trained), model, [stage], context.train, context.val, step=step)
    info: dict[str, Any] = {"head": head.current_spec(), "growth": kind, "scenario": stage.train, "normalize": normalize,
                            "new_parameters": sum(p.numel() for p in head.parameters())}
    if previous is not None:
        tasks = tasks + [{"name": name, "classes": context.train.classes, "recipe": recipe.to_dict(), "preprocessing": pre.to_dict()}]
        row = evaluate_tasks(model.eval(), tasks, context.reporter, context.placement)
        matrix = [r + [None] * (len(tasks) - len(r)) for r in matrix] + [row]
        info.update(tasks=tasks, accuracy_matrix=matrix, forgetting=forgetting(matrix), lwf=config.lwf)
        context.run.log(event="accuracy_matrix", matrix=matrix, forgetting=info["forgetting"])
    return RouteResult(model, info, history)


@register_route("grow-depth", grows=True)
def grow_depth(context: Context) -> RouteResult:
    """DA: a new fully connected layer FCa between the representation and the new classifier."""
    return grow_route(context, "depth")


@register_route("grow-width", grows=True)
def grow_width(context: Context) -> RouteResult:
    """WA: S new units beside the top representation layer, L2-normalised and gamma-scaled."""
    return grow_route(context, "width")


@register_route("grow-both", grows=True)
def grow_both(context: Context) -> RouteResult:
    """DWA: widen the top layer, then FCa on the widened representation."""
    return grow_route(context, "both")


@register_route("grow-width2", grows=True)
def grow_width2(context: Context) -> RouteResult:
    """WWA: widen the top two layers, the lower by S/2."""
    return grow_route(context, "width2")


__all__ = ["DEFAULT_GROW_ROUTE", "PAPER_TRAIN", "evaluate_tasks", "forgetting", "paper_train"]
