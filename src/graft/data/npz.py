"""Reading image sets from ``.npz`` archives, every array checked before it reaches the network.

Only ``numpy.savez`` archives with plain arrays are opened (``allow_pickle=False``: nothing in a file
can run code). Each problem is a one-line :class:`GraftError` naming the file, the array and the fix.
"""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from graft.errors import GraftError

log = logging.getLogger("graft")

SAVE_HINT = "save it with numpy.savez(path, images=(N,H,W,3) uint8, labels=(N,) int, classes=names)"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a .npz is a zip archive; anything else (.npy, text, empty) is not


def read_arrays(path: Path, names: tuple[str, ...] = ("images", "labels", "classes")) -> dict[str, np.ndarray]:
    """The arrays ``names`` present in the archive at ``path`` (``images`` is required)."""
    with path.open("rb") as handle:
        head = handle.read(6)
    if head[:4] not in _ZIP_MAGIC:
        what = "empty" if not head else "a .npy array" if head.startswith(b"\x93NUMPY") else "not a zip archive"
        raise GraftError(f"{path}: not an .npz archive ({what}); {SAVE_HINT}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "images" not in npz.files:
                raise GraftError(f"{path}: .npz has no 'images' array (keys: {npz.files}); {SAVE_HINT}")
            return {name: npz[name] for name in names if name in npz.files}
    except ValueError as error:  # object arrays need pickle, which is never allowed
        if "pickle" in str(error):
            raise GraftError(f"{path}: an array holds Python objects, which graft never unpickles; {SAVE_HINT}") from None
        raise GraftError(f"{path}: cannot read .npz ({error}); {SAVE_HINT}") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise GraftError(f"{path}: damaged .npz ({type(error).__name__}: {error}); {SAVE_HINT}") from None


def normalise_images(images: np.ndarray, path: Path) -> np.ndarray:
    """(N,H,W), (N,H,W,1|3|4) of uint8/uint16/int/float -> (N,H,W,3) uint8.

    Floats in [0, 1] are scaled by 255, other floats and integers must lie in [0, 255] (uint16 in [0, 65535]);
    NaN, infinity, negative values, booleans and complex numbers are refused rather than silently clipped.
    """
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise GraftError(f"{path}: images have shape {images.shape}; expected (N,H,W,3) (or (N,H,W) greyscale)")
    if images.shape[1] == 0 or images.shape[2] == 0:
        raise GraftError(f"{path}: images have shape {images.shape}: no pixels; give images at least 1x1")
    kind = images.dtype.kind
    if kind not in "uif":
        raise GraftError(f"{path}: images are of type {images.dtype}; give uint8 (0-255) or float (0-1) pixels")
    if kind == "f" and images.size and not np.isfinite(images).all():
        count = int((~np.isfinite(images)).sum())
        raise GraftError(f"{path}: {count} pixel values are NaN or infinite; replace them (e.g. numpy.nan_to_num) before saving")
    if images.dtype == np.uint16:
        images = (images >> 8).astype(np.uint8)
    elif kind == "f":
        low, high = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
        if low < 0 or high > 255:
            raise GraftError(f"{path}: float pixels span [{low:g}, {high:g}]; give values in [0, 1] or [0, 255]")
        images = np.clip(images * (255.0 if high <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    elif images.dtype != np.uint8:
        low, high = (int(images.min()), int(images.max())) if images.size else (0, 0)
        if low < 0 or high > 255:
            raise GraftError(f"{path}: integer pixels span [{low}, {high}]; give uint8 values in [0, 255]")
        images = images.astype(np.uint8)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    elif images.shape[-1] == 4:
        images = images[..., :3]
    return images


def check_labels(labels: np.ndarray, count: int, path: Path) -> np.ndarray:
    """(N,) integer class indices (-1: unlabelled) from the archive's ``labels`` array."""
    if labels.ndim == 2 and labels.shape[0] == count and labels.shape[1] > 1:
        raise GraftError(f"{path}: labels have shape {labels.shape}, one-hot or multi-column; save labels.argmax(1) as (N,) class indices")
    if labels.ndim != 1:
        raise GraftError(f"{path}: labels have shape {labels.shape}; save them as a (N,) array of class indices (e.g. labels.reshape(-1))")
    if len(labels) != count:
        raise GraftError(f"{path}: {count} images but {len(labels)} labels; give one label per image")
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            raise GraftError(f"{path}: labels hold fractional or NaN values; give integer class indices")
    elif labels.dtype.kind not in "iu":
        raise GraftError(f"{path}: labels are of type {labels.dtype}; give integer class indices (names go in a 'classes' array)")
    labels = labels.astype(np.int64)
    unlabelled = int((labels == -1).sum())
    if unlabelled:  # -1 is graft's "no label": kept for routes that use unlabelled images, never trained on as a class
        log.warning("%s: %d images have label -1 (unlabelled); they are not used as labelled examples", path, unlabelled)
    return labels


def check_class_names(names: Optional[list[str]], path: Path) -> None:
    """Class names must be distinct and non-empty."""
    if names is None:
        return
    if any(not name.strip() for name in names):
        raise GraftError(f"{path}: the 'classes' array has an empty name; give every class a name")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise GraftError(f"{path}: class names {repeated} appear more than once in 'classes'; give each class one distinct name")
