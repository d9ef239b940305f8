"""The run lifecycle: one Lightning Fabric object (accelerator, devices, strategy, precision), seeding, the data
splits, and opening / resuming / finishing a run directory with its report (DESIGN.md §3 "One run lifecycle").

Workflows (`fit`, `grow`, `pretrain`, `compare`, `advise`, `analyze`, `evaluate`, `predict`, `features`) start a
:class:`Lifecycle` and run every forward pass on its :attr:`Lifecycle.placement` (Fabric's device, the run's precision).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from lightning_fabric import Fabric

from graft.console import Reporter
from graft.data.sources import ImageSet, load_images
from graft.data.split import make_splits
from graft.data.unlabeled import load_unlabeled
from graft.errors import GraftError
from graft.evaluation import Evaluation
from graft.loggers import ExperimentLoggers
from graft.model_card import write_model_card
from graft.multilabel import MultiLabelEvaluation
from graft.placement import Placement, set_threads
from graft.recipe import Recipe
from graft.recipe_checks import check_devices
from graft.report_data import save_report_data
from graft.routes import find_route, route_names
from graft.run_report import write_run_report
from graft.runs import Run, RunDirectory, default_run_path, load_run


def start_fabric(recipe: Recipe) -> Fabric:
    """The Fabric object of ``recipe.runtime`` (launched: DDP processes start here)."""
    runtime = recipe.runtime
    check_devices(runtime.accelerator, runtime.devices)  # a missing GPU is one line here, not Fabric's traceback
    devices: Any = int(runtime.devices) if runtime.devices.isdigit() else runtime.devices
    fabric = Fabric(accelerator=runtime.accelerator, devices=devices, strategy=runtime.strategy, precision=runtime.precision)
    fabric.launch()
    return fabric


def resolve_recipe(recipe: Optional[Recipe], overrides: Sequence[str], **fields: Any) -> Recipe:
    """A recipe from defaults (or ``recipe``), then keyword fields, then ``section.key=value`` overrides."""
    recipe = recipe or Recipe()
    route = fields.pop("route", None)
    assignments = [f"{k}={json.dumps(v)}" for k, v in fields.items() if v is not None]
    if route:
        recipe = dataclasses.replace(recipe, route=route)
    return recipe.override([*assignments, *overrides])


def as_path(value: Any) -> Any:
    """A DATA argument as the recipe records it: a path string (an :class:`ImageSet` by its origin), or None."""
    if value is None or isinstance(value, ImageSet):
        return None if value is None else value.origin
    return str(value)


@dataclass
class Lifecycle:
    """What one workflow runs on: the recipe, its Fabric object and the reporter (rank 0 prints)."""

    recipe: Recipe
    fabric: Fabric
    reporter: Reporter
    started: float = field(default_factory=time.time)

    @classmethod
    def start(cls, recipe: Recipe) -> "Lifecycle":
        """Fabric (launched), torch threads (``runtime.threads``, else the usable cores shared among the ranks:
        :func:`graft.placement.default_threads`) and every seed set from ``recipe.runtime``."""
        fabric = start_fabric(recipe)
        set_threads(recipe.runtime.threads, fabric.world_size)
        fabric.seed_everything(recipe.runtime.seed, verbose=False)
        return cls(recipe, fabric, Reporter(quiet=recipe.runtime.quiet, enabled=fabric.global_rank == 0,
                                             progress=recipe.runtime.progress))

    @classmethod
    def for_inference(cls, precision: Optional[str] = None, accelerator: Optional[str] = None, quiet: bool = True,
                      recipe: Optional[Recipe] = None) -> "Lifecycle":
        """One device (``accelerator``, default the recipe's: auto) under ``precision`` (default the recipe's) for the
        inference workflows (evaluate, predict, analyze, advise, features); no processes are launched."""
        recipe = recipe or Recipe()
        runtime = dataclasses.replace(recipe.runtime, devices="1", strategy="auto", quiet=quiet,
                                      precision=precision or recipe.runtime.precision, accelerator=accelerator or recipe.runtime.accelerator)
        recipe = dataclasses.replace(recipe, runtime=runtime)
        set_threads(runtime.threads)
        try:
            fabric = Fabric(accelerator=runtime.accelerator, devices=1, precision=runtime.precision)
        except (ValueError, RuntimeError) as error:  # an unknown precision, or an accelerator this machine lacks
            raise GraftError(f"--accelerator {runtime.accelerator} --precision {runtime.precision}: {error}; "
                             "give --accelerator cpu (or auto) and a precision such as 32-true or bf16-mixed") from error
        return cls(recipe, fabric, Reporter(quiet=quiet))

    @property
    def placement(self) -> Placement:
        """Fabric's device and the recipe's precision: where every forward pass outside the training loop runs."""
        return Placement.for_fabric(self.fabric, self.recipe.runtime.precision, self.recipe.data.num_workers)

    def describe(self) -> dict[str, str]:
        """Where forward passes run: {"device": e.g. "cuda:0", "precision": e.g. "bf16-mixed"}."""
        return {"device": str(self.fabric.device), "precision": str(self.recipe.runtime.precision)}

    def threading(self) -> dict[str, Any]:
        """How this process uses the CPU: torch's intra-op threads and OMP_WAIT_POLICY ("" when unset; the ``graft``
        command sets PASSIVE unless the user chose, see :mod:`graft.__main__`)."""
        return {"threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}

    @property
    def writer(self) -> bool:
        return self.fabric.global_rank == 0

    def splits(self) -> tuple[ImageSet, Optional[ImageSet], Optional[ImageSet]]:
        """Train/val/test sets of the recipe (:func:`graft.data.split.make_splits`)."""
        return make_splits(self.recipe, self.reporter)

    def images(self) -> ImageSet:
        """The recipe's DATA read without labels (routes registered ``labelled=False``: no splits)."""
        if not self.recipe.data.train:
            raise GraftError(f"no images given; route {self.recipe.route} needs DATA (a folder or .npz; labels are not read), "
                             "e.g. `graft pretrain images/ --objective exemplar --arch exemplar-64c5-64c5-128f`")
        return load_images(self.recipe.data.train, labelled=False)

    def unlabeled(self, classes: list[str]) -> Optional[ImageSet]:
        """The ``--unlabeled`` images (labels never read), refused for routes that would ignore them."""
        recipe = self.recipe
        if not recipe.data.unlabeled:
            return None
        spec = find_route(recipe.route)
        if spec is None or not spec.unlabeled:
            users = [name for name in route_names() if find_route(name).unlabeled]
            raise GraftError(f"route {recipe.route} does not use --unlabeled {recipe.data.unlabeled}; use route {' or '.join(users)}, or drop it")
        images = load_unlabeled(recipe.data.unlabeled, classes)
        self.reporter.print(f"unlabelled: {len(images)} images from {images.origin}" + (f"; skipped {len(images.skipped)} unreadable files" if images.skipped else ""))
        return images

    def open_run(self, resume: Optional[str | Path], prepare: Callable[[RunDirectory], Any] = lambda run: None,
                 data: Optional[dict[str, Optional[ImageSet]]] = None) -> tuple[RunDirectory, Optional[dict[str, Any]], Any]:
        """The run directory, its checkpoint and what ``prepare`` returned: ``resume``'s run (logged; nothing
        prepared), or a new one at ``runtime.out`` (default runs/ROUTE-BACKBONE-TIME) once ``prepare(final directory,
        not yet written)`` has passed (it refuses bad input before anything is written). The fingerprints of ``data``
        (the image sets) are recorded in a new run and checked against a resumed one's."""
        if resume is not None:
            run, _ = RunDirectory.reopen(resume, self.writer)
            if data is not None:
                run.check_data(data)  # other images than the run started on are refused
            self.started -= run.seconds_before()  # model.json's seconds cover every process of the run
            checkpoint = run.load_checkpoint()
            run.log(event="resume", from_checkpoint=checkpoint is not None)
            return run, checkpoint, None
        final = Path(self.recipe.runtime.out) if self.recipe.runtime.out else default_run_path(self.recipe)
        prepared = prepare(RunDirectory(final, False))
        run = RunDirectory.create(final, self.recipe, self.writer)
        if data is not None:
            run.check_data(data)
        return run, None, prepared

    def interrupted(self, run: RunDirectory, command: str) -> None:
        self.reporter.print(f"[yellow]interrupted[/]; continue with: {command} --resume {run.path}")

    def finish_run(self, run: RunDirectory, model: torch.nn.Module, meta: dict[str, Any],
                   evaluation: Optional[Evaluation | MultiLabelEvaluation],
                   splits: Optional[dict[str, Optional[ImageSet]]] = None, experiment: Optional[ExperimentLoggers] = None,
                   test_logits: Optional[np.ndarray] = None) -> Run:
        """Save the model and its meta, the test evaluation, report.html (with the data of ``splits`` and the top losses
        of the (N, C) ``test_logits``) and the model card (README.md, from ``splits``),
        hand the final metrics to the ``experiment`` loggers, move the run into place; the finished :class:`Run`
        (loaded back from disk on rank 0, so it is what every later command sees)."""
        metrics = meta["metrics"]
        run.save_model(model, meta)
        if evaluation is not None and run.writer:
            run.write_json("test_evaluation.json", evaluation.to_dict())
        run.log(event="done", **metrics)
        if experiment is not None:
            experiment.finish(metrics)
        if run.writer:
            if splits is not None:
                save_report_data(run.work, splits, test_logits)
            write_run_report(run.work)
            if splits is not None:
                write_model_card(run.work, meta, evaluation, splits)
        path = run.finish()
        self.reporter.print(f"[green]done[/] {meta['route']}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                                                           for k, v in metrics.items()))
        return load_run(path) if self.writer else Run(path, model, meta)


__all__ = ["Lifecycle", "as_path", "make_splits", "resolve_recipe", "start_fabric", "write_run_report"]
