"""``graft pretrain``: make a backbone when no suitable pretrained one exists (DESIGN.md routes 6 and 7).

* ``supervised``: train ``arch`` from random weights on a labelled source dataset (the ``scratch``
  route of :func:`graft.api.fit`, BatchNorm statistics learnt).
* ``exemplar``: Exemplar-CNN (Dosovitskiy et al. 2014) on unlabelled images: every seed patch is a
  surrogate class, its transformed copies the training images, through graft's one training loop.

Both write an ordinary run directory whose backbone any route takes as ``--backbone run:PATH``
(or ``--weights PATH``), and both continue an interrupted run with ``resume=``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import timm
import torch

from graft.api import _as_path, _fabric, fit, resolve_recipe, write_run_report
from graft.backbones import create_model
from graft.console import Reporter
from graft.data.sources import load_images
from graft.data.transforms import Preprocessing
from graft.errors import GraftError
from graft.exemplar import SurrogateCopies, check_patch_source, sample_seed_patches
from graft.recipe import Recipe
from graft.run_files import resume_recipe
from graft.runs import Run, RunDirectory, default_run_path, load_run
from graft.train.groups import Stage, parse_stages
from graft.train.loop import train_stages
from graft.train.steps import SupervisedStep

OBJECTIVES = ("supervised", "exemplar")
# training from random weights: BatchNorm learns its statistics, one learning rate for every layer
SUPERVISED_DEFAULTS = ["train.bn_mode=train"]
# the surrogate copies are the augmentation; hard one-hot targets as in the paper
# an Exemplar-CNN epoch is K copies of N surrogate classes, sized by the user: epochs as given, no step floor
EXEMPLAR_DEFAULTS = ["train.bn_mode=train", "train.augment.preset=none", "train.label_smoothing=0", "train.stages=all:10",
                     "train.backbone_lr_ratio=1.0", "train.min_steps=0"]


def pretrain(data: Any = None, objective: str = "supervised", arch: Optional[str] = None, *, out: Optional[str | Path] = None,
             recipe: Optional[Recipe] = None, overrides: Sequence[str] = (), quiet: bool = False,
             resume: Optional[str | Path] = None, callbacks: Sequence[Callable[[dict[str, Any]], None]] = ()) -> Run:
    """Pretrain backbone ``arch`` on ``data`` by ``objective`` and return the finished :class:`Run`.

    >>> source = graft.pretrain("cifar10_train.npz", "exemplar", "exemplar-64c5-64c5-128f", overrides=["exemplar.classes=2000"])
    >>> graft.fit("target/", route="lpft", backbone=f"run:{source.path}")
    """
    if resume is not None:
        _, saved = RunDirectory.reopen(resume)
        objective = "exemplar" if saved.route == "exemplar" else "supervised"
    elif objective not in OBJECTIVES:
        raise GraftError(f"unknown objective '{objective}'; choose one of {', '.join(OBJECTIVES)}")
    elif not arch:
        raise GraftError("give the architecture to pretrain, e.g. --arch exemplar-64c5-64c5-128f or --arch graft_convnet_m")
    if objective == "supervised":
        if resume is not None:
            return fit(resume=resume, overrides=overrides, quiet=quiet, callbacks=callbacks)
        return fit(data, route="scratch", backbone=arch, out=out, recipe=recipe, quiet=quiet, callbacks=callbacks,
                   overrides=[*SUPERVISED_DEFAULTS, "model.pretrained=false", *overrides])
    return _pretrain_exemplar(data, arch, out, recipe, overrides, quiet, resume, callbacks)


def _pretrain_exemplar(data: Any, arch: Optional[str], out: Optional[str | Path], recipe: Optional[Recipe], overrides: Sequence[str],
                       quiet: bool, resume: Optional[str | Path], callbacks: Sequence[Callable[[dict[str, Any]], None]]) -> Run:
    if resume is not None:
        _, recipe = RunDirectory.reopen(resume)
        recipe = resume_recipe(recipe, list(overrides), Path(resume))  # changes to a half-done run are refused, named
    else:
        recipe = resolve_recipe(recipe, [*EXEMPLAR_DEFAULTS, *overrides], route="exemplar", **{
            "model.backbone": arch, "model.pretrained": False, "data.train": _as_path(data),
            "runtime.out": None if out is None else str(out), "runtime.quiet": quiet or None})
    if not recipe.data.train:
        raise GraftError("no IMAGES given; e.g. `graft pretrain images/ --objective exemplar --arch exemplar-64c5-64c5-128f`")
    config, seed = recipe.exemplar, recipe.runtime.seed
    if recipe.runtime.threads:
        torch.set_num_threads(recipe.runtime.threads)
    fabric = _fabric(recipe)
    fabric.seed_everything(seed, verbose=False)
    reporter = Reporter(quiet=recipe.runtime.quiet, enabled=fabric.global_rank == 0)
    started = time.time()
    images = load_images(recipe.data.train, labelled=False)  # labels, if any, are ignored
    check_patch_source(images, config)
    model = create_model(recipe.model.backbone, config.classes, pretrained=False)  # refuses an unknown arch before writing
    data_config = timm.data.resolve_model_data_config(model)
    pre = Preprocessing(config.patch_size, tuple(data_config["mean"]), tuple(data_config["std"]), "bilinear", 1.0)
    seeds = sample_seed_patches(images, config, seed)  # images smaller than the patch fail here, before the run exists
    writer = fabric.global_rank == 0
    checkpoint = None
    if resume is not None:
        run, _ = RunDirectory.reopen(resume, writer)
        checkpoint = run.load_checkpoint()
        run.log(event="resume", from_checkpoint=checkpoint is not None)
    else:
        run = RunDirectory.create(Path(recipe.runtime.out) if recipe.runtime.out else default_run_path(recipe), recipe, writer)
    reporter.print(f"exemplar: {len(seeds)} seed patches ({config.patch_size} px) from {len(images)} images, "
                   f"{config.copies} copies each, transformations {', '.join(config.transforms) or 'none'} -> {run.path}")
    run.log(event="seed_patches", count=len(seeds), mean_energy=float(seeds.energy.mean()), seconds=round(time.time() - started, 2))
    train = SurrogateCopies(seeds, config, range(config.copies), seed, pre.mean, pre.std)
    val = SurrogateCopies(seeds, config, range(config.copies, config.copies + config.val_copies), seed, pre.mean, pre.std)
    stages = [Stage("all", sum(s.epochs for s in parse_stages(recipe.train.stages)))]
    try:
        history = train_stages(fabric, model, stages, train, val if config.val_copies else None, pre, recipe, run, reporter,
                               step=SupervisedStep(recipe.train.label_smoothing), callbacks=callbacks, checkpoint=checkpoint,
                               channels_last=recipe.model.channels_last)
    except KeyboardInterrupt:
        reporter.print(f"[yellow]interrupted[/]; continue with: graft pretrain --resume {run.path}")
        raise
    metrics: dict[str, Any] = {"surrogate_classes": len(seeds), "chance": round(1 / len(seeds), 6)}
    if history:
        metrics["surrogate_train_accuracy"] = history[-1]["train_accuracy"]
        if "val_accuracy" in history[0]:
            metrics["surrogate_val_accuracy"] = max(h["val_accuracy"] for h in history)
    metrics["seconds"] = round(time.time() - started, 2)
    info = {"objective": "exemplar", "seed_windows": seeds.windows.tolist(), "transforms": list(config.transforms)}
    meta = {"backbone": recipe.model.backbone, "route": "exemplar", "classes": [f"surrogate-{i}" for i in range(len(seeds))],
            "preprocessing": pre.to_dict(), "metrics": metrics, "info": info, "skipped_files": [{"file": f, "reason": r} for f, r in images.skipped],
            "recipe": recipe.to_dict()}
    run.save_model(model.eval(), meta)
    run.log(event="done", **metrics)
    if run.writer:
        write_run_report(run.work, meta, None, history)
    path = run.finish()
    reporter.print("[green]done[/] exemplar: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    return load_run(path) if writer else Run(path, model, meta)
