"""Route ``exemplar``: Exemplar-CNN pretraining on unlabelled images (Dosovitskiy et al. 2014; DESIGN.md route 7).

Every seed patch (sampled with probability proportional to its gradient energy, sec. 2) is a surrogate class;
its transformed copies are that class's training images. The network trains from random weights in graft's one
loop, with hard one-hot targets (sec. 3). `graft pretrain --objective exemplar` runs this route; its run
directory is a backbone any route takes as ``--backbone run:PATH``.
"""
from __future__ import annotations

from typing import Any

import timm

from graft.backbones import create_model
from graft.data.transforms import Preprocessing
from graft.exemplar import SeedPatches, SurrogateCopies, check_patch_source, sample_seed_patches
from graft.routes.context import Context, RouteResult
from graft.routes.registry import register_route
from graft.train.groups import Stage, parse_stages
from graft.train.loop import LoopSetup, train_stages
from graft.train.steps import SupervisedStep

# the surrogate copies are the augmentation; hard one-hot targets as in the paper
# an Exemplar-CNN epoch is K copies of N surrogate classes, sized by the user: epochs as given, no step floor
DEFAULTS = ("train.bn_mode=train", "train.augment.preset=none", "train.label_smoothing=0", "train.stages=all:10",
            "train.backbone_lr_ratio=1.0", "train.min_steps=0", "model.pretrained=false")


def prepare(context: Context) -> tuple[Any, Preprocessing, SeedPatches]:
    """The network (random weights, one output per surrogate class), the patch preprocessing and the seed patches;
    run before the run directory exists, so an unknown architecture or images the request cannot fit fail first."""
    config = context.recipe.exemplar
    check_patch_source(context.train, config)
    model = create_model(context.recipe.model.backbone, config.classes, pretrained=False)
    data_config = timm.data.resolve_model_data_config(model)
    pre = Preprocessing(config.patch_size, tuple(data_config["mean"]), tuple(data_config["std"]), "bilinear", 1.0)
    return model, pre, sample_seed_patches(context.train, config, context.recipe.runtime.seed)


@register_route("exemplar", pretrained=False, labelled=False, compared=False, prepare=prepare, defaults=DEFAULTS)
def exemplar(context: Context) -> RouteResult:
    recipe, config, seed = context.recipe, context.recipe.exemplar, context.recipe.runtime.seed
    model, pre, seeds = context.prepared if context.prepared is not None else prepare(context)  # a resumed run prepares here
    images = context.train
    context.reporter.print(f"exemplar: {len(seeds)} seed patches ({config.patch_size} px) from {len(images)} images, "
                           f"{config.copies} copies each, transformations {', '.join(config.transforms) or 'none'} -> {context.run.path}")
    context.run.log(event="seed_patches", count=len(seeds), mean_energy=float(seeds.energy.mean()), seconds=context.elapsed())
    train = SurrogateCopies(seeds, config, range(config.copies), seed, pre.mean, pre.std)
    val = SurrogateCopies(seeds, config, range(config.copies, config.copies + config.val_copies), seed, pre.mean, pre.std)
    stages = [Stage("all", sum(s.epochs for s in parse_stages(recipe.train.stages)))]
    history = train_stages(LoopSetup.of(context, pre), model, stages, train, val if config.val_copies else None,
                           step=SupervisedStep(recipe.train.label_smoothing))
    metrics: dict[str, Any] = {"surrogate_classes": len(seeds), "chance": round(1 / len(seeds), 6)}
    if history:
        metrics["surrogate_train_accuracy"] = history[-1]["train_accuracy"]
        if "val_accuracy" in history[0]:
            metrics["surrogate_val_accuracy"] = max(h["val_accuracy"] for h in history)
    info = {"objective": "exemplar", "seed_windows": seeds.windows.tolist(), "transforms": list(config.transforms)}
    return RouteResult(model, info, history, classes=[f"surrogate-{i}" for i in range(len(seeds))], preprocessing=pre, metrics=metrics)
