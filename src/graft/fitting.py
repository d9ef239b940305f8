"""Workflows ``fit`` and ``grow``: train a classifier by one registered route through the run lifecycle."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from graft.backbones.factory import resolve_backbone
from graft.errors import GraftError
from graft.evaluation import evaluate_logits, predict_logits
from graft.lifecycle import Lifecycle, as_path, resolve_recipe
from graft.loggers import ExperimentLoggers
from graft.multilabel import evaluate_scores
from graft.recipe import Recipe
from graft.report_data import DataSummary
from graft.routes import Context, find_route, get_route, route_names
from graft.routes.grow import DEFAULT_GROW_ROUTE
from graft.run_files import resume_recipe
from graft.runs import Run, RunDirectory, load_run


def fit(data: Any = None, route: Optional[str] = None, backbone: Optional[str] = None, weights: Optional[str] = None, *,
        val: Any = None, test: Any = None, out: Optional[str | Path] = None, recipe: Optional[Recipe] = None,
        overrides: Sequence[str] = (), quiet: bool = False, progress: bool = True, resume: Optional[str | Path] = None,
        callbacks: Sequence[Callable[[dict[str, Any]], None]] = ()) -> Run:
    """Train a classifier on ``data`` by ``route`` (or, for a ``labelled=False`` route, a backbone) and return the
    finished :class:`Run`; every forward pass runs on ``runtime.accelerator`` under ``runtime.precision``.
    ``quiet=True`` prints nothing; ``progress=False`` keeps the messages but draws no progress bars (``runtime.progress``).

    >>> run = graft.fit("images/", route="lpft", backbone="mobilenetv2_100", weights="mnv2.safetensors")
    >>> run.metrics["test_accuracy"]
    """
    if resume is not None:
        _, recipe = RunDirectory.reopen(resume)
        recipe = resume_recipe(recipe, list(overrides), Path(resume))
        # how much it prints is the caller's choice now, not the interrupted run's (runtime-only keys: allowed on resume)
        recipe = recipe.override([*["runtime.quiet=true"] * quiet, *["runtime.progress=false"] * (not progress)])
    else:
        # the route's own defaults go before the caller's overrides (the route is known once the recipe names it)
        named = find_route(resolve_recipe(recipe, (), route=route).route)  # None: refused below with the list of routes
        defaults = list(named.defaults) if named is not None else []
        recipe = resolve_recipe(recipe, [*defaults, *overrides], route=route, **{"model.backbone": backbone, "model.weights": weights,
                                "data.train": as_path(data), "data.val": as_path(val), "data.test": as_path(test),
                                "runtime.out": None if out is None else str(out), "runtime.quiet": quiet or None,
                                "runtime.progress": None if progress else False})
    spec = get_route(recipe.route)
    life = Lifecycle.start(recipe)
    reporter = life.reporter
    train, val_set, test_set = life.splits() if spec.labelled else (life.images(), None, None)
    # refuse a bad backbone or weights file before anything is written or trained
    base_backbone, _ = resolve_backbone(recipe.model.backbone, recipe.model.weights)
    experiment = ExperimentLoggers(recipe)  # an unknown logger or a missing extra is refused here, before the run exists
    unlabeled = life.unlabeled(train.classes)

    def prepare(final: RunDirectory) -> Any:  # bad input (e.g. weights that do not fit) fails here, before the run directory exists
        probe = Context(recipe, life.fabric, train, val_set, test_set, final, reporter, started=life.started)
        if spec.prepare is not None:
            return spec.prepare(probe)
        probe.model()
        return None

    run, checkpoint, prepared = life.open_run(resume, prepare, {"train": train, "val": val_set, "test": test_set})
    experiment.start(run.work, run.path.name, run.writer)
    context = Context(recipe, life.fabric, train, val_set, test_set, run, reporter, [*callbacks, experiment], checkpoint, unlabeled, prepared,
                      life.started)
    where = life.describe()
    run.log(event="device", **where, **life.threading())
    reporter.print(f"route [bold]{recipe.route}[/] on {recipe.model.backbone} -> {run.path} ({where['device']}, {where['precision']})")
    try:
        result = spec.fit(context)
    except KeyboardInterrupt:
        life.interrupted(run, "graft fit")
        raise
    except Exception:
        if resume is None:  # nothing trained yet: leave no .partial that --resume would only fail on again
            run.discard_if_untrained()
        raise
    model = result.model.eval()
    pre = result.preprocessing or context.preprocessing(model)
    metrics: dict[str, Any] = {}
    evaluation, logits = None, None
    if test_set is not None and len(test_set):
        logits = result.test_logits if result.test_logits is not None else predict_logits(
            model, test_set, pre, recipe.data.batch_size * 2, reporter, placement=life.placement)
        if test_set.multilabel:
            evaluation = evaluate_scores(logits, test_set.targets, test_set.classes)
            metrics.update(test_mAP=evaluation.mean_ap, test_count=evaluation.count)
        else:
            evaluation = evaluate_logits(logits, test_set.labels, test_set.classes)
            metrics.update(test_accuracy=evaluation.accuracy, test_count=evaluation.count)
    if spec.labelled:
        metrics.update(run.returned_model(result.history))  # of the model returned (e.g. lpft's probe), not the best epoch
    metrics = {"seconds": round(time.time() - life.started, 2), **metrics, **result.metrics}
    # every split's: refused by their header when listed, or by their body when extraction or training decoded them
    skipped = DataSummary.of({"train": train, "val": val_set, "test": test_set}).skipped
    meta = {"backbone": base_backbone, "route": recipe.route, "classes": result.classes or train.classes, "preprocessing": pre.to_dict(),
            "metrics": metrics, "history": result.history, "info": result.info,
            "skipped_files": skipped, "skipped_count": len(skipped), "files_outside_data_folder": train.outside,
            **({} if unlabeled is None else {"unlabeled_skipped_files": [{"file": f, "reason": r} for f, r in unlabeled.skipped]}),
            "recipe": recipe.to_dict(), "multilabel": train.multilabel}
    return life.finish_run(run, model, meta, evaluation, splits={"train": train, "val": val_set, "test": test_set},
                           experiment=experiment, test_logits=logits)


def grow(run: str | Path | Run, data: Any, route: Optional[str] = None, *, val: Any = None, test: Any = None,
         out: Optional[str | Path] = None, overrides: Sequence[str] = (), quiet: bool = False, progress: bool = True) -> Run:
    """Continual growth (Wang et al. 2017, sec. 5.4): grow ``run`` again for the task in ``data``, keeping every
    earlier task's head; the new run's ``info`` holds the accuracy matrix (task after step) and the forgetting.

    Examples:
        >>> step = graft.grow("runs/source", "task_a.npz", route="grow-width", test="task_a_test.npz")
        >>> step.meta["info"]["accuracy_matrix"]
    """
    path = Path(run.path if isinstance(run, Run) else run)
    meta = load_run(path).meta
    previous = find_route(meta["route"])
    route = route or (meta["route"] if previous is not None and previous.grows else DEFAULT_GROW_ROUTE)
    spec = find_route(route)
    if spec is None or not spec.grows:
        growers = [name for name in route_names() if get_route(name).grows]
        raise GraftError(f"graft grow needs a grow route ({', '.join(growers)}), not '{route}'")
    return fit(data, route=route, backbone=f"run:{path}", val=val, test=test, out=out, quiet=quiet, progress=progress,
               overrides=[f"grow.previous={json.dumps(str(path))}", *overrides])


__all__ = ["fit", "grow"]
