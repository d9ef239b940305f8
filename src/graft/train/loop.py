"""graft's one training loop, on Lightning Fabric (devices, precision, DDP, checkpoint I/O).

Stages run in order, each with a fresh optimizer and a rebuilt module wrapper (so DDP
never sees ``requires_grad`` change under it). Every epoch is seeded from
(seed, stage, epoch), and a checkpoint is written after it, so a resumed run repeats
exactly what the uninterrupted one would have done.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

import numpy as np
import torch
from lightning_fabric import Fabric
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from graft.console import Reporter
from graft.data.sources import ImageSet
from graft.data.transforms import Preprocessing, TransformedImages, batch_mixer, eval_transform, train_transform
from graft.errors import GraftError
from graft.placement import Placement
from graft.recipe import Recipe
from graft.runs import RunDirectory
from graft.train.groups import Stage, apply_stage, optimizer_groups, trainable_names
from graft.train.schedule import BestWeights, epoch_seed, lr_factor, make_optimizer, set_learning_rates
from graft.train.steps import MultiLabelStep, SupervisedStep, batch_loss, hits

Callback = Callable[[dict[str, Any]], None]


class StopTraining(Exception):
    """Raised by an epoch callback to end training after that epoch: the run then finishes as usual, with the best
    weights on validation so far (or the last ones without validation), and logs a "halted" event with the reason.
    Route auto's budget uses it so that a candidate cut short is still a model (:class:`graft.comparison.BudgetedRunner`)."""


class RunParts(Protocol):
    """What a route's context carries that the loop needs (:class:`graft.routes.context.Context` has it)."""

    fabric: Fabric
    recipe: Recipe
    run: RunDirectory
    reporter: Reporter
    callbacks: Sequence[Callback]
    checkpoint: Optional[dict[str, Any]]


@dataclass(frozen=True)
class LoopSetup:
    """Everything :func:`train_stages` needs besides the model, its stages and its data.

    ``preprocessing`` turns ImageSets into tensors (the model's input size and normalisation); ``checkpoint``
    (from :meth:`RunDirectory.load_checkpoint`) continues an interrupted run; ``use_min_steps=False`` keeps
    the epochs as given even below ``train.min_steps`` (the head is already trained, as LP-FT's probe).
    """

    fabric: Fabric
    recipe: Recipe
    run: RunDirectory
    reporter: Reporter
    preprocessing: Preprocessing
    callbacks: Sequence[Callback] = ()
    checkpoint: Optional[dict[str, Any]] = None
    use_min_steps: bool = True

    @classmethod
    def of(cls, context: RunParts, preprocessing: Preprocessing, **changes: Any) -> "LoopSetup":
        """The setup of a route's ``context`` (its Fabric, recipe, run, reporter, callbacks and checkpoint);
        ``changes`` replace fields (e.g. ``recipe=`` a route's own training schedule, ``use_min_steps=``)."""
        setup = cls(context.fabric, context.recipe, context.run, context.reporter, preprocessing, tuple(context.callbacks),
                    context.checkpoint)
        return dataclasses.replace(setup, **changes) if changes else setup

    @property
    def channels_last(self) -> bool:
        return self.recipe.model.channels_last


@dataclass
class LoopState:
    """Where the loop is; saved in every checkpoint as JSON."""

    stage: int = 0
    epoch: int = 0  # epochs finished in the current stage
    best_accuracy: float = -1.0
    best_loss: float = math.inf
    best_at: Optional[list[int]] = None
    bad_epochs: int = 0
    global_epoch: int = 0
    halted: Optional[str] = None  # a callback's StopTraining: the reason (a resumed run trains no further)


def train_batch_size(images: int, batch_size: int) -> int:
    """Tiny sets still get several optimizer steps per epoch: at least 4, batches no smaller than 8."""
    return max(1, min(batch_size, max(8, images // 4), images))


def stretch_factor(steps_per_epoch: int, stages: Sequence[Stage], min_steps: int) -> int:
    """How many times each stage's epochs are repeated so that the schedule makes at least ``min_steps`` optimizer steps.

    With a few dozen labelled images an epoch is a handful of steps and a 10-epoch schedule leaves a new head
    barely trained (on CIFAR-10 with 10 labels per class, fine-tuning ended near chance); ``train.min_steps``
    sets a floor in steps, the unit optimizers actually care about, as step-based schedules in timm and
    Hugging Face do.
    """
    total = steps_per_epoch * sum(s.epochs for s in stages)
    return max(1, math.ceil(min_steps / total)) if total and min_steps > 0 else 1


@torch.no_grad()
def validate(fabric: Fabric, model: nn.Module, loader: DataLoader) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over ``loader``, summed across processes."""
    model.eval()
    totals = torch.zeros(3)
    for batch in loader:
        if batch is None:  # no image of this batch decoded (graft.placement.collate_readable)
            continue
        images, labels = batch
        logits = model(images)
        totals += torch.tensor([hits(logits, labels).sum().item(), batch_loss(logits, labels, "sum").item(), len(labels)])
    totals = fabric.all_reduce(totals, reduce_op="sum") if fabric.world_size > 1 else totals
    return float(totals[0] / totals[2]), float(totals[1] / totals[2])


def _paired(first: DataLoader, second: Optional[DataLoader], steps: int) -> Iterator[tuple[Any, Any]]:
    """``steps`` pairs (batch of ``first``, batch of ``second`` or None); a loader that runs out starts again."""
    def cycle(loader: DataLoader) -> Iterator[Any]:
        while True:
            yield from loader

    firsts = cycle(first)
    seconds = cycle(second) if second is not None else None
    for _ in range(steps):
        yield next(firsts), (next(seconds) if seconds is not None else None)


def _channels_last(batch: Sequence[Any]) -> tuple[Any, ...]:
    images = batch[0]  # (B, 3, S, S); a step that takes several views per image (B, V, 3, S, S) converts each view itself
    return (images.contiguous(memory_format=torch.channels_last) if images.dim() == 4 else images, *batch[1:])


def _dataset(images: ImageSet | Dataset, transform: Callable[[torch.Tensor], torch.Tensor], indexed: bool = False) -> Dataset:
    return images if isinstance(images, Dataset) else TransformedImages(images, transform, indexed)


def skip_unreadable(fabric: Fabric, run: RunDirectory, sets: dict[str, tuple[Any, Optional[Dataset]]]) -> None:
    """Name the images whose files failed to decode while training (flagged by :class:`TransformedImages`, in any loader
    worker of any rank) in the run's metrics.jsonl, and take them out of their ImageSet (:meth:`ImageSet.discard`), so
    model.json and the report list them and count only the images that remain."""
    for name, (images, dataset) in sets.items():
        if not isinstance(images, ImageSet) or not isinstance(dataset, TransformedImages) or dataset.unreadable is None:
            continue
        flags = dataset.unreadable.to(torch.int32)
        if fabric.world_size > 1:  # each rank saw its share of the images
            flags = fabric.all_reduce(flags.to(fabric.device), reduce_op="sum").cpu()
        reasons = dataset.unreadable_reasons(np.flatnonzero(flags.numpy() > 0))
        if reasons:
            run.log(event="skipped", split=name, during="training",
                    files=[{"file": str(images.paths[i]), "reason": reason} for i, reason in sorted(reasons.items())])
            images.discard(reasons)


def train_stages(setup: LoopSetup, model: nn.Module, stages: Sequence[Stage], train: ImageSet | Dataset,
                 val: Optional[ImageSet | Dataset], step: Optional[Callable[..., dict[str, torch.Tensor]]] = None,
                 unlabeled: Optional[ImageSet] = None) -> list[dict[str, Any]]:
    """Train ``model`` in place through ``stages``; restore the best validation weights at the end.

    ``unlabeled``: a second set drawn alongside (pseudo-labels, distillation); the step is then called as
    ``step(module, batch, unlabeled=batch)``, an epoch is one pass over the longer of the two sets, the
    shorter one cycles. A step with an ``indexed`` attribute gets (images, labels, indices) batches, and
    one with a ``progress`` attribute gets the fraction of training done set before each batch.
    ``train``/``val`` may be ready-made datasets of (image tensor, label) that bring their own
    transforms (e.g. Exemplar-CNN surrogate copies); ImageSets go through ``setup.preprocessing`` and the
    recipe's augmentation. Returns the per-epoch history (also appended to metrics.jsonl).
    """
    fabric, recipe, run, reporter, pre = setup.fabric, setup.recipe, setup.run, setup.reporter, setup.preprocessing
    checkpoint, channels_last = setup.checkpoint, setup.channels_last
    config = recipe.train
    batch_size = train_batch_size(len(train), recipe.data.batch_size)
    generator = torch.Generator()
    indexed = bool(getattr(step, "indexed", False))
    transform = train_transform(pre, config.augment)
    # workers decode and augment (graft.placement.default_workers when unset). Training workers start anew every epoch:
    # their seeds then come from the loop's per-epoch generator, so each epoch's augmentation is a function of (seed,
    # stage, epoch) and a resumed run is exact; persistent workers would carry their random state across epochs.
    # Validation has no randomness: its workers persist.
    placement = Placement.for_fabric(fabric, recipe.runtime.precision, recipe.data.num_workers)
    train_data = _dataset(train, transform, indexed)
    train_loader = placement.loader(train_data, batch_size, persistent=False,
                                    shuffle=True, generator=generator, drop_last=len(train) > batch_size)
    train_loader = fabric.setup_dataloaders(train_loader)
    unlabeled_loader, unlabeled_generator, unlabeled_data = None, torch.Generator(), None
    if unlabeled is not None and len(unlabeled):
        unlabeled_batch = min(recipe.data.batch_size, len(unlabeled))
        views = step.unlabeled_views(pre, config.augment) if hasattr(step, "unlabeled_views") else transform  # e.g. FixMatch's pairs
        unlabeled_data = TransformedImages(unlabeled, views, indexed)
        unlabeled_loader = fabric.setup_dataloaders(placement.loader(
            unlabeled_data, unlabeled_batch, persistent=False, shuffle=True, generator=unlabeled_generator,
            drop_last=len(unlabeled) > unlabeled_batch))
    val_loader, val_data = None, None
    if val is not None and len(val):
        val_data = _dataset(val, eval_transform(pre))
        val_loader = fabric.setup_dataloaders(placement.loader(val_data, recipe.data.batch_size * 2, persistent=True))
    step = step or (MultiLabelStep() if train.multilabel else SupervisedStep(config.label_smoothing, batch_mixer(config.augment, len(train.classes))))
    if channels_last:
        model.to(memory_format=torch.channels_last)

    steps = max(len(train_loader), len(unlabeled_loader) if unlabeled_loader is not None else 0)
    stretch = stretch_factor(steps, stages, config.min_steps if setup.use_min_steps else 0)
    if stretch > 1:
        stages = [Stage(s.train, s.epochs * stretch) for s in stages]
        reporter.print(f"{steps} steps an epoch: epochs x{stretch} to reach train.min_steps={config.min_steps} "
                       f"({', '.join(f'{s.train}:{s.epochs}' for s in stages)}); train.min_steps=0 keeps them as given")
    if checkpoint is None:
        run.log(event="schedule", steps_per_epoch=steps, stretch=stretch, stages=",".join(f"{s.train}:{s.epochs}" for s in stages))

    state = LoopState()
    best = BestWeights()
    if checkpoint is not None:
        state = LoopState(**checkpoint["state"]["loop"])
        try:
            model.load_state_dict(checkpoint["model"])
        except RuntimeError as error:  # recipe.yaml edited to another backbone since the checkpoint was written
            raise GraftError(f"{run.work / 'checkpoint'}: does not fit the recipe's model ({str(error).splitlines()[-1].strip()}); "
                             "put recipe.yaml back as it was, or remove the checkpoint to restart") from None
        best = BestWeights((state.best_accuracy, -state.best_loss), checkpoint["best"])
        if hasattr(step, "load_state_dict") and "step" in checkpoint["state"]:
            step.load_state_dict(checkpoint["state"]["step"])  # e.g. FixMatch's threshold statistics
    # the epochs of earlier processes come back with the checkpoint: a resumed run's history is the whole run's
    history: list[dict[str, Any]] = list(checkpoint["state"].get("history", [])) if checkpoint is not None else []
    if checkpoint is None and val_loader is not None:
        module = fabric.setup_module(model)
        accuracy, loss = validate(fabric, module, val_loader)
        run.log(event="initial", val_accuracy=accuracy, val_loss=loss)  # epoch 0 of the curves
        if not setup.use_min_steps:
            # a starting model whose head is trained competes too: LP-FT never ends below its probe on validation. A new
            # head (at zero: every class equally likely) is no model to keep: on multi-label scenes its constant scores
            # could tie a trained model's top-class hit rate
            state.best_accuracy, state.best_loss, state.best_at = accuracy, loss, [0, 0]
            best.keep(model, (accuracy, -loss))

    def save_checkpoint() -> None:
        run.save_checkpoint(model, optimizer, best.state, {"loop": asdict(state), "history": history,
                                                           **({"step": step.state_dict()} if hasattr(step, "state_dict") else {})})

    for index in range(len(stages) if state.halted is not None else state.stage, len(stages)):
        stage = stages[index]
        trainable = trainable_names(model, stage, config.bn_mode)
        apply_stage(model, trainable, config.bn_mode)
        optimizer = make_optimizer(config, optimizer_groups(model, config.lr, config.backbone_lr_ratio, config.weight_decay))
        if checkpoint is not None and index == state.stage and state.epoch > 0:
            optimizer.load_state_dict(checkpoint["optimizer"])
        module = fabric.setup_module(model)
        optimizer = fabric.setup_optimizers(optimizer)
        epochs_before = sum(s.epochs for s in stages[:index])
        total_epochs = sum(s.epochs for s in stages)
        reporter.print(f"stage {index + 1}/{len(stages)} [bold]{stage.train}[/]: {stage.epochs} epochs, "
                       f"{sum(p.numel() for n, p in model.named_parameters() if n in trainable):,} trainable parameters")
        for epoch in range(state.epoch, stage.epochs):
            started = time.time()
            torch.manual_seed(epoch_seed(recipe.runtime.seed, index, epoch))
            generator.manual_seed(epoch_seed(recipe.runtime.seed + 1, index, epoch))
            unlabeled_generator.manual_seed(epoch_seed(recipe.runtime.seed + 2, index, epoch))
            for loader in (train_loader, unlabeled_loader):
                if isinstance(getattr(loader, "sampler", None), DistributedSampler):
                    loader.sampler.set_epoch(state.global_epoch)
            apply_stage(model, trainable, config.bn_mode)
            sums = torch.zeros(3)
            batches = _paired(train_loader, unlabeled_loader, steps)
            for i, (batch, extra) in enumerate(reporter.track(batches, steps, f"{stage.train} epoch {epoch + 1}/{stage.epochs}")):
                # warm-up and step decay keep their place in the schedule as given, before any stretch
                set_learning_rates(optimizer, lr_factor(config, (epoch * steps + i) / (stage.epochs * steps), epoch // stretch,
                                                        stage.epochs // stretch))
                if batch is None or (unlabeled_loader is not None and extra is None):
                    continue  # every image of a batch failed to decode (graft.placement.collate_readable): nothing to learn from
                if hasattr(step, "progress"):
                    step.progress = (epochs_before + epoch + i / steps) / total_epochs
                if channels_last:
                    batch = _channels_last(batch)
                    extra = None if extra is None else _channels_last(extra)
                out = step(module, batch) if extra is None else step(module, batch, unlabeled=extra)
                optimizer.zero_grad(set_to_none=True)
                fabric.backward(out["loss"])
                optimizer.step()
                sums += torch.tensor([out["loss"].item() * len(out["labels"]),
                                      hits(out["logits"], out["labels"]).sum().item(), len(out["labels"])])
            record: dict[str, Any] = {"event": "epoch", "stage": index, "stage_name": stage.train, "epoch": epoch + 1,
                                      "train_loss": float(sums[0] / sums[2]), "train_accuracy": float(sums[1] / sums[2]),
                                      "lr": optimizer.param_groups[0]["lr"]}
            stop = False
            if val_loader is not None:
                accuracy, loss = validate(fabric, module, val_loader)
                record.update(val_accuracy=accuracy, val_loss=loss)
                if best.offer(model, (accuracy, -loss)):  # ties in accuracy go to the lower loss
                    state.best_accuracy, state.best_loss, state.best_at, state.bad_epochs = accuracy, loss, [index, epoch + 1], 0
                else:
                    state.bad_epochs += 1
                stop = config.patience is not None and state.bad_epochs >= config.patience
            record["seconds"] = round(time.time() - started, 2)
            history.append(record)
            run.log(**record)
            state.epoch, state.global_epoch = (stage.epochs if stop else epoch + 1), state.global_epoch + 1
            save_checkpoint()
            reporter.print("  " + "  ".join(f"{k}={v:.3g}" if k == "lr" else f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in record.items() if k not in ("event", "stage", "stage_name")))
            for callback in setup.callbacks:
                try:
                    callback(record)
                except StopTraining as request:
                    if state.halted is None:  # the checkpoint says so at once: killed from here on, --resume trains no further
                        state.halted = str(request)
                        save_checkpoint()
                        run.log(event="halted", stage=index, epoch=epoch + 1, reason=state.halted)
            if state.halted is not None:
                reporter.print(f"  halted: {state.halted}")
                break
            if stop:
                reporter.print(f"  early stop: no validation gain for {config.patience} epochs")
                run.log(event="early_stop", stage=index, epoch=epoch + 1)
                break
        state.stage, state.epoch, state.bad_epochs = index + 1, 0, 0
        checkpoint = None
        if state.halted is not None:
            break
    skip_unreadable(fabric, run, {"train": (train, train_data), "val": (val, val_data), "unlabeled": (unlabeled, unlabeled_data)})
    best.restore(model)  # no-op when nothing was kept (no validation set)
    if best.state is not None and state.best_at is not None:
        # the weights put back (stage, epoch within it; 0: the starting model, e.g. lpft's probe), also counted over the
        # whole history (returned_epoch): model.json's val_accuracy and the report's curves read this one record
        epoch = next((i + 1 for i, r in enumerate(history) if [r["stage"], r["epoch"]] == state.best_at), 0)
        run.log(event="returned", stage=state.best_at[0], epoch=state.best_at[1], returned_epoch=epoch,
                val_accuracy=state.best_accuracy, val_loss=state.best_loss)
    return history
