"""Seeded, stratified splits that never leave a class empty, and a recipe's train/val/test sets."""
from __future__ import annotations

from typing import Optional

import numpy as np

from graft.console import Reporter
from graft.data.sources import ImageSet, load_images, require_classes
from graft.errors import GraftError
from graft.recipe import Recipe


def stratified_split(labels: np.ndarray, fraction: float, seed: int, names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held) with about ``fraction`` of each class held out.

    Every class keeps at least one image on each side; a class with a single image
    cannot be split and is an error naming it.
    """
    if fraction <= 0:
        return np.arange(len(labels)), np.arange(0)
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for label in np.unique(labels[labels >= 0]):
        members = rng.permutation(np.flatnonzero(labels == label))
        if len(members) < 2:
            name = names[label] if names else str(label)
            # the test share is split off before the validation share, so say how many were left here, not in the file
            raise GraftError(f"class '{name}' has {len(members)} image left to split {fraction:.0%} off (the test share is split "
                             "off first, then the validation share); add images to it or give --val and --test explicitly")
        n_held = min(max(1, int(round(fraction * len(members)))), len(members) - 1)
        held.extend(members[:n_held])
        kept.extend(members[n_held:])
    return np.sort(np.asarray(kept, np.int64)), np.sort(np.asarray(held, np.int64))


def per_class_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of ``per_class`` randomly chosen images of each class (for few-label benchmarks)."""
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels[labels >= 0])]
    return np.sort(np.concatenate(chosen))


def random_split(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``count`` indices into (kept, held), about ``fraction`` held: for multi-label sets, which have no one class to stratify by."""
    if fraction <= 0:
        return np.arange(count), np.arange(0)
    order = np.random.default_rng(seed).permutation(count)
    held = min(max(1, int(round(fraction * count))), count - 1)
    return np.sort(order[held:]), np.sort(order[:held])


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
    if data.hold_out_test:  # split off (so train and val stay the same) but not handed to the run
        test = None
    reporter.print(f"{len(train.classes)} classes; train {len(train)}, val {0 if val is None else len(val)}, "
                   f"test {0 if test is None else len(test)} images" + (f"; skipped {len(skipped)} unreadable files" if skipped else "")
                   + (f"; clipped {train.clipped_boxes} boxes to their image" if train.clipped_boxes else ""))
    return train, val, test


def _split(images: ImageSet, indices: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified for single-label sets; seeded random for multi-label sets (no one class per image)."""
    if images.multilabel:
        return random_split(len(indices), fraction, seed)
    return stratified_split(images.labels[indices], fraction, seed, images.classes)
