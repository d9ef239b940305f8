"""The Python API; each CLI command wraps one of these functions."""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from graft.console import Reporter
from graft.data.sources import ImageSet, load_images, require_classes
from graft.data.split import random_split, stratified_split
from graft.errors import GraftError
from graft.evaluation import Evaluation, evaluate_logits, predict_logits
from graft.multilabel import MultiLabelEvaluation, evaluate_scores
from graft.recipe import Recipe
from graft.report import plot_confusion, plot_curves, save_figure, table, write_html
from graft.routes import Context, get_route
from graft.run_files import resume_recipe
from graft.runs import Run, RunDirectory, default_run_path, load_run


def _fabric(recipe: Recipe):
    from lightning_fabric import Fabric

    from graft.recipe_checks import check_devices

    runtime = recipe.runtime
    check_devices(runtime.accelerator, runtime.devices)  # a missing GPU is one line here, not Fabric's traceback
    devices: Any = int(runtime.devices) if runtime.devices.isdigit() else runtime.devices
    fabric = Fabric(accelerator=runtime.accelerator, devices=devices, strategy=runtime.strategy, precision=runtime.precision)
    fabric.launch()
    return fabric


def make_splits(recipe: Recipe, reporter: Reporter) -> tuple[ImageSet, Optional[ImageSet], Optional[ImageSet]]:
    """Train/val/test sets: given ones are read, missing ones are split off the training data (seeded, stratified)."""
    data = recipe.data
    if not data.train:
        raise GraftError("no DATA given; e.g. `graft fit images/ --route lpft --backbone resnet18`")
    train = load_images(data.train)
    require_classes(train)
    rest = np.arange(len(train))
    test = load_images(data.test, classes=train.classes) if data.test else None
    if test is None and data.test_fraction > 0:
        rest, held = _split(train, rest, data.test_fraction, recipe.runtime.seed)
        test = train.subset(held)
    val = load_images(data.val, classes=train.classes) if data.val else None
    if val is None and data.val_fraction > 0:
        keep, held = _split(train, rest, data.val_fraction, recipe.runtime.seed + 1)
        val, rest = train.subset(rest[held]), rest[keep]
    skipped = list(train.skipped) + (test.skipped if test is not None and test.skipped is not train.skipped else [])
    train = train.subset(rest)
    train.skipped = skipped
    reporter.print(f"{len(train.classes)} classes; train {len(train)}, val {0 if val is None else len(val)}, "
                   f"test {0 if test is None else len(test)} images" + (f"; skipped {len(skipped)} unreadable files" if skipped else "")
                   + (f"; clipped {train.clipped_boxes} boxes to their image" if train.clipped_boxes else ""))
    return train, val, test


def _split(images: ImageSet, indices: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified for single-label sets; seeded random for multi-label sets (no one class per image)."""
    if images.multilabel:
        return random_split(len(indices), fraction, seed)
    return stratified_split(images.labels[indices], fraction, seed, images.classes)


def resolve_recipe(recipe: Optional[Recipe], overrides: Sequence[str], **fields: Any) -> Recipe:
    """A recipe from defaults (or ``recipe``), then keyword fields, then ``section.key=value`` overrides."""
    recipe = recipe or Recipe()
    flat = {"route": fields.pop("route", None)}
    assignments = [f"{k}={json.dumps(v)}" for k, v in fields.items() if v is not None]
    if flat["route"]:
        recipe = dataclasses.replace(recipe, route=flat["route"])
    return recipe.override([*assignments, *overrides])


def fit(data: Any = None, route: Optional[str] = None, backbone: Optional[str] = None, weights: Optional[str] = None, *,
        val: Any = None, test: Any = None, out: Optional[str | Path] = None, recipe: Optional[Recipe] = None,
        overrides: Sequence[str] = (), quiet: bool = False, resume: Optional[str | Path] = None,
        callbacks: Sequence[Callable[[dict[str, Any]], None]] = ()) -> Run:
    """Train a classifier on ``data`` by ``route`` and return the finished :class:`Run`.

    >>> run = graft.fit("images/", route="lpft", backbone="mobilenetv2_100", weights="mnv2.safetensors")
    >>> run.metrics["test_accuracy"]
    """
    if resume is not None:
        _, recipe = RunDirectory.reopen(resume)
        if recipe.route == "exemplar":  # an interrupted Exemplar-CNN pretraining: `graft fit --resume` takes it too
            from graft.pretraining import pretrain

            return pretrain(resume=resume, overrides=overrides, quiet=quiet, callbacks=callbacks)
        recipe = resume_recipe(recipe, list(overrides), Path(resume))
    else:
        recipe = resolve_recipe(recipe, overrides, route=route, **{"model.backbone": backbone, "model.weights": weights,
                                "data.train": _as_path(data), "data.val": _as_path(val), "data.test": _as_path(test),
                                "runtime.out": None if out is None else str(out), "runtime.quiet": quiet or None})
    route_fn = get_route(recipe.route)
    if recipe.runtime.threads:
        torch.set_num_threads(recipe.runtime.threads)
    fabric = _fabric(recipe)
    fabric.seed_everything(recipe.runtime.seed, verbose=False)
    reporter = Reporter(quiet=recipe.runtime.quiet, enabled=fabric.global_rank == 0)
    started = time.time()
    train, val, test = make_splits(recipe, reporter)
    # refuse a bad backbone or weights file before anything is written or trained
    from graft.backbones.factory import resolve_backbone

    base_backbone, _ = resolve_backbone(recipe.model.backbone, recipe.model.weights)
    unlabeled = _unlabeled(recipe, train.classes, reporter)
    writer = fabric.global_rank == 0
    if resume is not None:
        run, _ = RunDirectory.reopen(resume, writer)
        run.check_data({"train": train, "val": val, "test": test})
        started -= run.seconds_before()  # model.json's seconds cover every process of the run
        checkpoint = run.load_checkpoint()
        run.log(event="resume", from_checkpoint=checkpoint is not None)
    else:
        final = Path(recipe.runtime.out) if recipe.runtime.out else default_run_path(recipe)
        context_probe = Context(recipe, fabric, train, val, test, RunDirectory(final, False), reporter)
        context_probe.model()  # weights that do not fit fail here, before the run directory exists
        run, checkpoint = RunDirectory.create(final, recipe, writer), None
        run.check_data({"train": train, "val": val, "test": test})
    context = Context(recipe, fabric, train, val, test, run, reporter, callbacks, checkpoint, unlabeled)
    reporter.print(f"route [bold]{recipe.route}[/] on {recipe.model.backbone} -> {run.path}")
    try:
        result = route_fn(context)
    except KeyboardInterrupt:
        reporter.print(f"[yellow]interrupted[/]; continue with: graft fit --resume {run.path}")
        raise
    except Exception:
        if resume is None:  # nothing trained yet: leave no .partial that --resume would only fail on again
            run.discard_if_untrained()
        raise
    model = result.model.eval()
    pre = context.preprocessing(model)
    metrics: dict[str, Any] = {"seconds": round(time.time() - started, 2)}
    evaluation = None
    if test is not None and len(test):
        logits = result.test_logits if result.test_logits is not None else predict_logits(model, test, pre, recipe.data.batch_size * 2, reporter)
        if test.multilabel:
            evaluation = evaluate_scores(logits, test.targets, test.classes)
            metrics.update(test_mAP=evaluation.mean_ap, test_count=evaluation.count)
        else:
            evaluation = evaluate_logits(logits, test.labels, test.classes)
            metrics.update(test_accuracy=evaluation.accuracy, test_count=evaluation.count)
    metrics.update(run.returned_model(result.history))  # of the model returned (e.g. lpft's probe), not the best epoch
    metrics["seconds"] = round(time.time() - started, 2)
    meta = {"backbone": base_backbone, "route": recipe.route, "classes": train.classes, "preprocessing": pre.to_dict(),
            "metrics": metrics, "history": result.history, "info": result.info, "skipped_files": [{"file": f, "reason": r} for f, r in train.skipped],
            "files_outside_data_folder": train.outside,
            "recipe": recipe.to_dict(), "multilabel": train.multilabel}
    run.save_model(model, meta)
    if evaluation is not None and run.writer:
        run.write_json("test_evaluation.json", evaluation.to_dict())
    run.log(event="done", **metrics)
    if run.writer:
        write_run_report(run.work, meta, evaluation, result.history)
    path = run.finish()
    reporter.print(f"[green]done[/] {recipe.route}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    return load_run(path) if writer else Run(path, model, meta)


def _unlabeled(recipe: Recipe, classes: list[str], reporter: Reporter) -> Optional[ImageSet]:
    """The ``--unlabeled`` images (labels never read), refused for routes that would ignore them."""
    if not recipe.data.unlabeled:
        return None
    from graft.data.unlabeled import load_unlabeled
    from graft.routes import USES_UNLABELED

    if not USES_UNLABELED.get(recipe.route):
        users = [name for name, uses in USES_UNLABELED.items() if uses]
        raise GraftError(f"route {recipe.route} does not use --unlabeled {recipe.data.unlabeled}; use route {' or '.join(users)}, or drop it")
    images = load_unlabeled(recipe.data.unlabeled, classes)
    reporter.print(f"unlabelled: {len(images)} images from {images.origin}" + (f"; skipped {len(images.skipped)} unreadable files" if images.skipped else ""))
    return images


def _as_path(value: Any) -> Any:
    if value is None or isinstance(value, ImageSet):
        return None if value is None else value.origin
    return str(value)


def write_run_report(folder: Path, meta: dict[str, Any], evaluation: Optional[Evaluation | MultiLabelEvaluation], history: list[dict[str, Any]]) -> Path:
    """report.html with the summary, per-class accuracy, confusion matrix and learning curves."""
    images = []
    sections = [("Summary", table([{"route": meta["route"], "backbone": meta["backbone"], **meta["metrics"]}]))]
    if isinstance(evaluation, MultiLabelEvaluation):
        sections.append((f"Per-class test AP (mAP {evaluation.mean_ap:.4f})", table([{"class": c, "AP": a} for c, a in evaluation.per_class_ap.items()])))
    elif evaluation is not None:
        images.append(save_figure(plot_confusion(evaluation.confusion, evaluation.classes), folder / "confusion.png"))
        sections.append(("Per-class test accuracy", table([{"class": c, "accuracy": a} for c, a in evaluation.per_class.items()])))
    if history:
        images.append(save_figure(plot_curves(history), folder / "curves.png"))
    if meta.get("skipped_files"):
        sections.append(("Skipped files", table(meta["skipped_files"])))
    if meta.get("files_outside_data_folder"):
        sections.append(("Files outside the CSV's folder", table([{"file": f} for f in meta["files_outside_data_folder"]])))
    return write_html(folder / "report.html", f"graft run: {meta['route']} on {meta['backbone']}", sections, images)


def evaluate(run: str | Path | Run, data: Any, batch_size: int = 128, quiet: bool = True,
             out: Optional[str | Path] = None, task: Optional[str | int] = None) -> Evaluation | MultiLabelEvaluation:
    """Accuracy, per-class accuracy and confusion matrix of a finished run on labelled ``data``;
    per-class AP and mAP (:class:`MultiLabelEvaluation`) when ``data`` has several labels per image.
    ``task``: which task of a grown run (``graft grow``) answers; its latest by default.

    Writes ``confusion.png`` (single-label) and ``evaluation.json`` to ``out`` (default: RUN/evaluations/<data name>).
    """
    run = select_task(run if isinstance(run, Run) else load_run(run), task)
    images = load_images(data, classes=run.classes)
    folder = Path(out) if out else run.path / "evaluations" / Path(str(data)).stem
    if images.multilabel:
        evaluation = evaluate_scores(run_scores(run, images, batch_size, Reporter(quiet=quiet)), images.targets, images.classes)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "evaluation.json").write_text(json.dumps(evaluation.to_dict(), indent=2))
        return evaluation
    if (images.labels < 0).any():
        raise GraftError(f"{images.origin}: {int((images.labels < 0).sum())} images have no label; evaluation needs labels")
    evaluation = evaluate_logits(run_scores(run, images, batch_size, Reporter(quiet=quiet)), images.labels, images.classes)
    folder.mkdir(parents=True, exist_ok=True)
    evaluation.extra["confusion_png"] = str(save_figure(plot_confusion(evaluation.confusion, evaluation.classes), folder / "confusion.png"))
    (folder / "evaluation.json").write_text(json.dumps(evaluation.to_dict(), indent=2))
    return evaluation


def run_scores(run: Run, images: ImageSet, batch_size: int = 128, reporter: Optional[Reporter] = None) -> np.ndarray:
    """(N, C) class scores of a run: logits, or for the patches route its aggregated window scores."""
    if run.meta["route"] == "patches":
        from graft.routes.patches import run_patch_scores

        return run_patch_scores(run, images, reporter)
    return predict_logits(run.model, images, run.preprocessing, batch_size, reporter)


def grow(run: str | Path | Run, data: Any, route: Optional[str] = None, *, val: Any = None, test: Any = None,
         out: Optional[str | Path] = None, overrides: Sequence[str] = (), quiet: bool = False) -> Run:
    """Continual growth (Wang et al. 2017, sec. 5.4): grow ``run`` again for the task in ``data``, keeping every
    earlier task's head; the new run's ``info`` holds the accuracy matrix (task after step) and the forgetting.

    >>> step = graft.grow("runs/source", "task_a.npz", route="grow-width", test="task_a_test.npz")
    >>> step.meta["info"]["accuracy_matrix"]
    """
    path = Path(run.path if isinstance(run, Run) else run)
    meta = load_run(path).meta
    route = route or (meta["route"] if str(meta["route"]).startswith("grow-") else "grow-width")
    if not route.startswith("grow-"):
        raise GraftError(f"graft grow needs a grow route (grow-depth, grow-width, grow-both, grow-width2), not '{route}'")
    return fit(data, route=route, backbone=f"run:{path}", val=val, test=test, out=out, quiet=quiet,
               overrides=[f"grow.previous={json.dumps(str(path))}", *overrides])


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


def predict(run: str | Path | Run, images: Sequence[str | Path] | ImageSet, top_k: int = 5,
            task: Optional[str | int] = None) -> list[dict[str, Any]]:
    """Top-k class names and probabilities for each image file (``task``: which task of a grown run answers)."""
    run = select_task(run if isinstance(run, Run) else load_run(run), task)
    if not isinstance(images, ImageSet):
        paths = [Path(p) for p in images]
        for path in paths:
            if not path.is_file():
                what = "is a folder" if path.is_dir() else "image not found"
                raise GraftError(f"{path}: {what}; give image files (e.g. {path}/*.png for a folder's images)")
        images = ImageSet(run.classes, np.full(len(paths), -1, np.int64), paths=paths, origin="predict")
    scores = torch.from_numpy(run_scores(run, images))
    # multi-label runs score each class on its own (sigmoid); patches runs give (mean_i p^k)^(1/k), the power mean of
    # their windows' probabilities: on the probability scale, and ranked as the mean_i p^k that evaluate uses
    if run.meta["route"] == "patches":
        probabilities = (scores ** (1.0 / run.meta["recipe"]["patches"]["k"])).numpy()
    else:
        probabilities = (torch.sigmoid(scores) if run.meta.get("multilabel") else torch.softmax(scores, 1)).numpy()
    k = min(top_k, len(run.classes))
    names = [str(p) for p in images.paths] if images.paths else [f"{images.origin}[{i}]" for i in range(len(images))]
    results = []
    for name, row in zip(names, probabilities):
        order = np.argsort(-row)[:k]
        results.append({"image": name, "top": [{"class": run.classes[i], "probability": float(row[i])} for i in order]})
    return results


def scenes(objects: Any, out: str | Path, count: int = 200, size: int = 128, object_size: tuple[float, float] = (0.5, 0.9),
           objects_per_scene: tuple[int, int] = (1, 3), background: str = "texture", seed: int = 0) -> dict[str, Any]:
    """Write a multi-object benchmark (VOC XML + COCO JSON) of ``count`` scenes made from single-label ``objects``.

    >>> graft.scenes("cifar10_test.npz", "scenes/test", object_size=(0.15, 0.3), background="photos.npz", seed=1)
    """
    from graft.scene_builder import SceneSpec, build_scenes

    spec = SceneSpec(count=count, size=size, object_size=tuple(object_size), objects_per_scene=tuple(objects_per_scene),
                     background=str(background), seed=seed)
    return build_scenes(objects, out, spec)


def analyze(run: str | Path | Run, data: Any = None, out: Optional[str | Path] = None, units: Optional[Sequence[int]] = None,
            count: int = 4, k: int = 8, max_images: int = 600, embedding: str = "auto", seed: int = 0, quiet: bool = True) -> Any:
    """Analyse a finished run: embeddings before/after, top-k images of units, weight change, confusion, curves.

    Writes PNGs and one self-contained ``report.html`` to ``out`` (default RUN/analysis) and returns the
    :class:`graft.analysis.Analysis` (its ``report`` attribute is the HTML path).
    """
    from graft.analysis import analyse
    from graft.report import write_analysis_report

    run = run if isinstance(run, Run) else load_run(run)
    reporter = Reporter(quiet=quiet)
    result = analyse(run, data, units, count, k, max_images, embedding, seed, reporter)
    folder = Path(out) if out else run.path / "analysis"
    result.report = write_analysis_report(result, folder, f"graft analyze: {run.meta['route']} on {run.meta['backbone']} ({run.path.name})")
    reporter.print(f"report: {result.report}")
    return result


def export(run: str | Path | Run, format: str = "onnx", out: Optional[str | Path] = None, atol: float = 1e-4) -> dict[str, Any]:
    """Export to ONNX or TorchScript and check the exported outputs match PyTorch's within ``atol``."""
    from graft.exporting import export_model

    run = run if isinstance(run, Run) else load_run(run)
    return export_model(run, format, Path(out) if out else None, atol)


# `graft compare` and `graft advise` live in their own modules (they call fit and the feature cache)
from graft.advice import advise  # noqa: E402
from graft.comparison import compare  # noqa: E402

__all__ = ["fit", "grow", "evaluate", "predict", "export", "scenes", "analyze", "compare", "advise", "load_run", "Recipe", "Run", "GraftError"]

