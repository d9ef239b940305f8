"""Workflows ``evaluate`` and ``predict`` of a finished run, on the lifecycle's device under a chosen precision."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from graft.console import Reporter
from graft.data.sources import ImageSet, load_images
from graft.ensembles import FlipAverage
from graft.errors import GraftError
from graft.evaluation import Evaluation, evaluate_logits, predict_logits
from graft.lifecycle import Lifecycle
from graft.multilabel import MultiLabelEvaluation, evaluate_scores
from graft.placement import Placement
from graft.recipe_checks import AUGMENT_PRESETS
from graft.report import plot_confusion, save_figure
from graft.routes import find_route
from graft.runs import Run, load_run


def run_lifecycle(run: Run, precision: Optional[str] = None, accelerator: Optional[str] = None, quiet: bool = True) -> Lifecycle:
    """One device for ``run``'s forward passes; ``precision`` defaults to the one the run trained and was scored with."""
    recorded = run.meta.get("recipe", {}).get("runtime", {}).get("precision")
    return Lifecycle.for_inference(precision or recorded, accelerator, quiet)


TTA_CHOICES = ("none", "flip")


def resolve_tta(run: Run, tta: Optional[str]) -> str:
    """The test-time augmentation ``run`` answers with: ``tta`` when given, else the one the run recorded (route auto
    records ``flip`` when validation said it helps), else none. ``flip`` is refused where a mirror image need not be of
    the same class: runs trained without horizontal flips (augment preset digits or none), multi-label runs and
    routes that score by their own hook (patches)."""
    chosen = run.meta.get("tta", "none") if tta is None else tta
    if chosen not in TTA_CHOICES:
        raise GraftError(f"--tta {chosen}: unknown test-time augmentation; choose {' or '.join(TTA_CHOICES)}")
    if chosen == "flip":
        augment = run.meta.get("recipe", {}).get("train", {}).get("augment", {})
        preset = augment.get("preset", "none")
        flips = augment.get("hflip") if augment.get("hflip") is not None else AUGMENT_PRESETS.get(preset, {}).get("hflip", False)
        spec = find_route(run.meta["route"])
        problem = ("it has several labels per image" if run.meta.get("multilabel") else
                   f"route {run.meta['route']} scores images by its own windows" if spec is not None and spec.score is not None else
                   f"it trained without horizontal flips (augment preset '{preset}'), so a mirror image need not be of the same class"
                   if not flips else "")
        if problem:
            raise GraftError(f"--tta flip: {run.path} cannot average over mirror images: {problem}; use --tta none")
    return chosen


def run_scores(run: Run, images: ImageSet, batch_size: int = 128, reporter: Optional[Reporter] = None,
               placement: Placement = Placement(), tta: Optional[str] = None) -> np.ndarray:
    """(N, C) class scores of a run: its logits, or what its route's ``score`` hook computes (e.g. patches' window scores).

    ``tta="flip"``: the log of the mean softmax over each image and its mirror image (:class:`graft.ensembles.FlipAverage`);
    None: what the run recorded (:func:`resolve_tta`)."""
    if resolve_tta(run, tta) == "flip":
        return predict_logits(FlipAverage(run.model), images, run.preprocessing, batch_size, reporter, placement=placement)
    spec = find_route(run.meta["route"])
    if spec is not None and spec.score is not None:
        return spec.score(run, images, placement, batch_size, reporter)
    return predict_logits(run.model, images, run.preprocessing, batch_size, reporter, placement=placement)


def run_probabilities(run: Run, scores: np.ndarray) -> np.ndarray:
    """What `predict` reports: softmax (single-label), sigmoid (multi-label: each class on its own), or the route's hook."""
    spec = find_route(run.meta["route"])
    if spec is not None and spec.probabilities is not None:
        return spec.probabilities(run, scores)
    tensor = torch.from_numpy(scores)
    return (torch.sigmoid(tensor) if run.meta.get("multilabel") else torch.softmax(tensor, 1)).numpy()


def evaluate(run: str | Path | Run, data: Any, batch_size: int = 128, quiet: bool = True, out: Optional[str | Path] = None,
             task: Optional[str | int] = None, precision: Optional[str] = None, accelerator: Optional[str] = None,
             tta: Optional[str] = None) -> Evaluation | MultiLabelEvaluation:
    """Accuracy, per-class accuracy and confusion matrix of a finished run on labelled ``data``;
    per-class AP and mAP (:class:`MultiLabelEvaluation`) when ``data`` has several labels per image.
    ``task``: which task of a grown run (``graft grow``) answers; its latest by default. ``precision`` /
    ``accelerator``: where the forward passes run (default: the run's precision, the best accelerator present).
    ``tta``: test-time augmentation, none or flip (default: what the run recorded, see :func:`resolve_tta`).

    Writes ``confusion.png`` (single-label) and ``evaluation.json`` to ``out`` (default: RUN/evaluations/<data name>).
    """
    run = select_task(run if isinstance(run, Run) else load_run(run), task)
    life = run_lifecycle(run, precision, accelerator, quiet)
    images = load_images(data, classes=run.classes)
    folder = Path(out) if out else run.path / "evaluations" / Path(str(data)).stem
    if not images.multilabel and (images.labels < 0).any():
        raise GraftError(f"{images.origin}: {int((images.labels < 0).sum())} images have no label; evaluation needs labels")
    tta = resolve_tta(run, tta)
    scores = run_scores(run, images, batch_size, life.reporter, life.placement, tta)
    folder.mkdir(parents=True, exist_ok=True)
    if images.multilabel:
        evaluation: Evaluation | MultiLabelEvaluation = evaluate_scores(scores, images.targets, images.classes)
    else:
        evaluation = evaluate_logits(scores, images.labels, images.classes)
        evaluation.extra["confusion_png"] = str(save_figure(plot_confusion(evaluation.confusion, evaluation.classes), folder / "confusion.png"))
    evaluation.extra.update(life.describe(), tta=tta)  # where the forward passes ran: a user checks the GPU path here
    if images.skipped:  # refused by their header, or their body did not decode: not counted, named here
        evaluation.extra["skipped_files"] = [{"file": file, "reason": reason} for file, reason in images.skipped]
    (folder / "evaluation.json").write_text(json.dumps(evaluation.to_dict(), indent=2))
    return evaluation


def select_task(run: Run, task: Optional[str | int]) -> Run:
    """``run`` answering for one of its tasks (a grown run's task name or index); the latest task by default."""
    if task is None:
        return run
    tasks = run.meta.get("info", {}).get("tasks")
    if not tasks:
        raise GraftError(f"{run.path}: not a multi-task run (made by `graft grow`); leave out --task")
    names = [t["name"] for t in tasks]
    index = names.index(task) if task in names else int(task) if str(task).lstrip("-").isdigit() else None
    if index is None or not -len(tasks) <= index < len(tasks):
        raise GraftError(f"{run.path}: no task '{task}'; its tasks are {', '.join(names)} (or 0..{len(tasks) - 1})")
    index %= len(tasks)
    run.model.get_classifier().active = index
    return Run(run.path, run.model, {**run.meta, "classes": tasks[index]["classes"], "preprocessing": tasks[index]["preprocessing"]})


def predict(run: str | Path | Run, images: Sequence[str | Path] | ImageSet, top_k: int = 5, task: Optional[str | int] = None,
            precision: Optional[str] = None, accelerator: Optional[str] = None, tta: Optional[str] = None) -> list[dict[str, Any]]:
    """Top-k class names and probabilities for each image file (``task``: which task of a grown run answers;
    ``precision`` / ``accelerator`` / ``tta`` as for :func:`evaluate`). A file that does not decode is left out of the
    results and named in a warning (all of them: an error naming the file)."""
    run = select_task(run if isinstance(run, Run) else load_run(run), task)
    life = run_lifecycle(run, precision, accelerator)
    if not isinstance(images, ImageSet):
        paths = [Path(p) for p in images]
        for path in paths:
            if not path.is_file():
                what = "is a folder" if path.is_dir() else "image not found"
                raise GraftError(f"{path}: {what}; give image files (e.g. {path}/*.png for a folder's images)")
        images = ImageSet(run.classes, np.full(len(paths), -1, np.int64), paths=paths, origin="predict")
    probabilities = run_probabilities(run, run_scores(run, images, placement=life.placement, tta=resolve_tta(run, tta)))
    k = min(top_k, len(run.classes))
    names = [str(p) for p in images.paths] if images.paths else [f"{images.origin}[{i}]" for i in range(len(images))]
    results = []
    for name, row in zip(names, probabilities):
        order = np.argsort(-row)[:k]
        results.append({"image": name, "top": [{"class": run.classes[i], "probability": float(row[i])} for i in order]})
    return results


__all__ = ["TTA_CHOICES", "evaluate", "predict", "resolve_tta", "run_lifecycle", "run_probabilities", "run_scores", "select_task"]
