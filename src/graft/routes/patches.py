"""Route ``patches``: multi-scale windows with a background class (Oquab et al. 2014, sec. 3.3; DESIGN.md route 5).

Against *dataset capture bias* (object-centred source images, cluttered multi-object target images):
every training image is cut into ~500 square windows at 8 scales, each labelled with the one object it
shows, *background*, or dropped (:mod:`graft.windows`); the adaptation layers of route ``adapt``
(FCa, FCb with one extra output for background) learn to classify windows, with background brought
to ``patches.background_share`` of the effective training set by loss weights or by sampling. By
default the representation stays frozen and window features are cached, so only the head trains;
``patches.finetune=true`` fine-tunes through the window crops with the recipe's stages instead. An
image's score for class C is mean_i p(C | P_i)^k over its windows (k = ``patches.k``, 5).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from graft.backbones import weights_hash
from graft.console import Reporter
from graft.data.sources import ImageSet
from graft.heads import AdaptationHead, attach_head
from graft.multilabel import evaluate_scores
from graft.errors import GraftError
from graft.placement import Placement
from graft.recipe import PatchesConfig
from graft.routes.registry import register_route
from graft.routes.context import Context, RouteResult
from graft.routes.finetune import run_stages
from graft.train.features_loop import fit_head, head_logits
from graft.train.groups import parse_stages
from graft.windows import DROPPED, background_weights, aggregate, cached_windows, crop_windows, grid_windows, image_boxes, label_windows


def window_scores(logits: np.ndarray, image_index: np.ndarray, count: int, k: float) -> np.ndarray:
    """(N, C) image scores from (W, C+1) window logits (last column: background) by mean_i p(C | P_i)^k."""
    probabilities = torch.softmax(torch.from_numpy(logits).float(), 1).numpy()[:, :-1]
    return aggregate(probabilities, image_index, count, k)


def image_score_function(windows: dict[str, np.ndarray], images: ImageSet, k: float) -> tuple[Callable[[nn.Module], float], str]:
    """Validation score of a window head: image mAP (multi-label) or image accuracy of the aggregated scores."""
    def scores(head: nn.Module) -> np.ndarray:
        return window_scores(head_logits(head, windows["features"]), windows["image"], len(images), k)

    if images.multilabel:
        return (lambda head: evaluate_scores(scores(head), images.targets, images.classes).mean_ap), "val_mAP"
    return (lambda head: float((scores(head).argmax(1) == images.labels).mean())), "val_accuracy"


def _windows(context: Context, model: nn.Module, images: ImageSet, cache: bool = True) -> dict[str, np.ndarray]:
    recipe = context.recipe
    result, cached = cached_windows(model, images, context.preprocessing(model), recipe.patches, recipe.data.batch_size * 2,
                                    context.reporter, cache and recipe.linear.cache, recipe.model.channels_last, context.placement)
    context.reporter.print(f"window features of {len(images)} images ({len(result['image'])} windows): {'from cache' if cached else 'extracted'}")
    context.run.log(event="window_features", images=len(images), windows=int(len(result["image"])), cached=cached)
    return result


def window_set(images: ImageSet, config: PatchesConfig, size: int, seed: int) -> ImageSet:
    """Labelled window crops (uint8, ``size`` px) as an image set of C+1 classes for fine-tuning: every object window
    and, unless ``reweight='none'``, background windows drawn so that they make ``background_share`` of the set.
    Images whose file does not decode leave ``images`` (:meth:`ImageSet.discard` names them)."""
    crops, labels = [], []
    unreadable: dict[int, str] = {}
    for index, image in images.decoded(unreadable):
        windows = grid_windows(image.shape[1], image.shape[0], config)
        window_labels = label_windows(windows, image_boxes(images, index, image), len(images.classes), config.window_share, config.box_share)
        keep = window_labels != DROPPED
        crops.append((crop_windows(image, windows[keep], size) * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
        labels.append(window_labels[keep])
    images.discard(unreadable)
    arrays, labels = np.concatenate(crops), np.concatenate(labels)
    background = len(images.classes)
    if config.reweight != "none":
        objects, rest = np.flatnonzero(labels != background), np.flatnonzero(labels == background)
        wanted = int(round(len(objects) * config.background_share / (1 - config.background_share))) if len(objects) else len(rest)
        rest = np.random.default_rng(seed).permutation(rest)[:wanted]
        chosen = np.sort(np.concatenate([objects, rest]))
        arrays, labels = arrays[chosen], labels[chosen]
    return ImageSet([*images.classes, "background"], labels, arrays=arrays, origin=f"windows of {images.origin}")


def run_patch_scores(run: Any, images: ImageSet, placement: Placement = Placement(), batch_size: int = 256,
                     reporter: Optional[Reporter] = None) -> np.ndarray:
    """(N, C) aggregated window scores mean_i p(C | P_i)^k of a finished patches run on ``images``."""
    config = PatchesConfig(**run.meta["recipe"]["patches"])
    windows, _ = cached_windows(run.model, images, run.preprocessing, config, max(batch_size, 256), reporter, placement=placement)
    return window_scores(head_logits(run.model.get_classifier(), windows["features"]), windows["image"], len(images), config.k)


def power_mean_probabilities(run: Any, scores: np.ndarray) -> np.ndarray:
    """(mean_i p^k)^(1/k): the image scores back on the probability scale (ranked as the mean_i p^k evaluate uses)."""
    return (torch.from_numpy(scores) ** (1.0 / run.meta["recipe"]["patches"]["k"])).numpy()


def refuse_export(run: Any) -> nn.Module:
    """A patches run answers by the power mean over windows cut from each full-resolution image; one exported network
    of the preprocessed input would answer for one window (C+1 window logits), not what `graft predict` says."""
    raise GraftError(f"{run.path}: a patches run scores an image by the power mean of ~{run.meta['recipe']['patches']['max_windows']} "
                     "windows cut from the full-resolution image, which one exported network cannot reproduce; "
                     "use `graft predict`/`graft evaluate` on the run, or export a run of route adapt or finetune")


@register_route("patches", compared=False, score=run_patch_scores, probabilities=power_mean_probabilities, export=refuse_export)
def patches(context: Context) -> RouteResult:
    config, recipe = context.recipe.patches, context.recipe
    model = context.model()
    head = AdaptationHead(model.num_features, context.num_classes + 1, recipe.adapt.hidden, recipe.adapt.dropout, recipe.model.head_init)
    attach_head(model, head)
    before = weights_hash(model)
    background = context.num_classes
    info: dict[str, Any] = {"head": head.spec, "background_class": background, "k": config.k, "reweight": config.reweight}
    history: list[dict[str, Any]] = []
    if config.finetune:
        pre = context.preprocessing(model)
        train = window_set(context.train, config, pre.size, recipe.runtime.seed)
        val = window_set(context.val, config, pre.size, recipe.runtime.seed + 1) if context.val is not None and len(context.val) else None
        info.update(trained_on="window crops", train_windows=len(train), background_windows=int((train.labels == background).sum()))
        context.reporter.print(f"patches: fine-tuning on {len(train)} window crops ({info['background_windows']} background)")
        finetune_context = Context(recipe, context.fabric, train, val, None, context.run, context.reporter, context.callbacks, context.checkpoint)
        history = run_stages(finetune_context, model, parse_stages(recipe.train.stages)).history
    else:
        windows = _windows(context, model, context.train)
        keep = windows["labels"] != DROPPED
        features, labels = windows["features"][keep], windows["labels"][keep]
        weights = background_weights(labels, background, config.background_share) if config.reweight != "none" else None
        score: Optional[Callable[[nn.Module], float]] = None
        name = "val_accuracy"
        if context.val is not None and len(context.val):
            score, name = image_score_function(_windows(context, model, context.val), context.val, config.k)
        info.update(trained_on="cached window features", train_windows=int(len(labels)), dropped_windows=int((~keep).sum()),
                    background_windows=int((labels == background).sum()))
        context.reporter.print(f"patches: {info['train_windows']} training windows ({info['background_windows']} background, "
                               f"{info['dropped_windows']} dropped with several objects); background re-weighted by {config.reweight} "
                               f"to {config.background_share:.0%}")
        history = fit_head(head, features, labels, recipe.train, config.epochs, recipe.adapt.batch_size, recipe.runtime.seed,
                           loss_weights=weights if config.reweight == "loss" else None,
                           draw_weights=weights if config.reweight == "sampling" else None,
                           score=score, score_name=name, reporter=context.reporter, log=context.run.log)
    info["backbone_unchanged"] = weights_hash(model) == before
    test_logits = None
    if context.test is not None and len(context.test):
        windows = _windows(context, model, context.test, cache=not config.finetune)
        test_logits = window_scores(head_logits(model.get_classifier(), windows["features"]), windows["image"], len(context.test), config.k)
    return RouteResult(model, info, history, test_logits)

