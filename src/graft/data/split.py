"""Seeded, stratified splits that never leave a class empty."""
from __future__ import annotations

import numpy as np

from graft.errors import GraftError


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
