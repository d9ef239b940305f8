"""Unlabelled images (``--unlabeled DIR_OR_NPZ``): their labels, if any, are never read.

A folder: every image file below it, in any sub-folder (sub-folder names are not read as classes).
An .npz: only its ``images`` array is opened; a ``labels`` array stays unread unless the user asks
for an audit of pseudo-label precision (:func:`hidden_labels`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from graft.data.sources import IMAGE_SUFFIXES, ImageSet, _normalise_array, check_files
from graft.data.npz import read_arrays
from graft.errors import GraftError

UNLABELED_FORMS = "a folder of images (any sub-folders) or an .npz with an 'images' array"


def load_unlabeled(source: str | Path, classes: list[str]) -> ImageSet:
    """An :class:`ImageSet` of ``source`` with every label -1, on the training set's ``classes``."""
    path = Path(source)
    if not path.exists():
        raise GraftError(f"{path}: unlabelled data does not exist; give {UNLABELED_FORMS}")
    if path.is_dir():
        return _read_folder(path, classes)
    if path.suffix.lower() != ".npz":
        raise GraftError(f"{path}: unknown unlabelled data form '{path.suffix}'; give {UNLABELED_FORMS}")
    images = read_arrays(path, ("images",))["images"]  # labels in the archive stay unread
    images = _normalise_array(images, path)
    if len(images) == 0:
        raise GraftError(f"{path}: no images; give {UNLABELED_FORMS}")
    return ImageSet(classes, np.full(len(images), -1, np.int64), arrays=images, origin=str(path))


def _read_folder(root: Path, classes: list[str]) -> ImageSet:
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
    paths, skipped, headers = check_files(files, root)
    if not paths:
        raise GraftError(f"{root}: no readable images (skipped {len(skipped)}); give {UNLABELED_FORMS}")
    return ImageSet(classes, np.full(len(paths), -1, np.int64), paths=paths, origin=str(root), skipped=skipped, headers=headers)


def hidden_labels(source: str | Path, classes: list[str]) -> np.ndarray:
    """The .npz's own labels, on ``classes``: read only to audit pseudo-labels (``--audit``), never to train."""
    path = Path(source)
    if path.suffix.lower() != ".npz":
        raise GraftError(f"{path}: --audit needs an .npz whose 'labels' (and 'classes') arrays hold the hidden labels")
    with np.load(path, allow_pickle=False) as npz:
        if "labels" not in npz.files:
            raise GraftError(f"{path}: --audit needs a 'labels' array in the .npz; drop --audit or add the hidden labels")
        labels = npz["labels"].astype(np.int64)
        names = [str(c) for c in npz["classes"]] if "classes" in npz.files else None
    if names is not None and names != classes:
        index = {name: i for i, name in enumerate(classes)}
        labels = np.array([index.get(names[label], -1) if 0 <= label < len(names) else -1 for label in labels], np.int64)
    return labels
