"""Multi-scale square windows with a background class (Oquab et al. 2014, sec. 3.3; DESIGN.md route 5).

Training images are cut into square windows on a regular grid at several scales; each window is
labelled with the one object it shows well enough, *background* when it shows none, or dropped
when it shows several. Background windows dominate, so they are re-weighted (in the loss or in the
sampling) to a chosen share. At test time an image's score for class C aggregates its windows:
score(C) = mean_i p(C | P_i)^k (paper: k = 5). Windows are cropped and resized for a whole image
at once with ``torchvision.ops.roi_align`` (bilinear; adaptive sampling averages when shrinking), and their frozen features are cached on disk.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Optional

import numpy as np
import torch
from torch import nn
from torchvision.ops import roi_align

from graft.backbones import weights_hash
from graft.console import Reporter
from graft.data.sources import ImageSet, positions_after_discard
from graft.data.transforms import Preprocessing, to_tensor
from graft.features import cache_dir, pooled_features
from graft.placement import Placement
from graft.recipe import PatchesConfig

DROPPED = -1  # a window showing several objects: not used for training


def _grid(width: int, height: int, config: PatchesConfig, density: float) -> list[np.ndarray]:
    per_scale = []
    for lam in np.geomspace(1.0, config.max_lambda, config.scales):
        side = min(width, height) / lam
        stride = side * (1 - config.overlap) / density
        xs = np.linspace(0, width - side, int(np.ceil((width - side) / stride - 1e-9)) + 1)
        ys = np.linspace(0, height - side, int(np.ceil((height - side) / stride - 1e-9)) + 1)
        per_scale.append(np.array([[x, y, x + side, y + side] for y in ys for x in xs], np.float32))
    return per_scale


def grid_windows(width: int, height: int, config: PatchesConfig) -> np.ndarray:
    """(W, 4) windows [x0, y0, x1, y1]: sides min(w, h)/lambda for ``config.scales`` lambdas spaced geometrically
    from 1 to ``max_lambda``; per scale a regular grid whose neighbours overlap at least ``overlap``.

    The grids are made denser (strides shrunk together) up to about ``max_windows`` windows, as the paper's
    ~500 per image; when even the minimum overlap gives more, each scale is thinned evenly in proportion.
    """
    per_scale, density = _grid(width, height, config, 1.0), 1.0
    while density < 8:
        denser = _grid(width, height, config, density * 1.05)
        if sum(len(g) for g in denser) > config.max_windows:
            break
        per_scale, density = denser, density * 1.05
    total = sum(len(g) for g in per_scale)
    if total > config.max_windows:
        keep = config.max_windows / total
        per_scale = [g[np.unique(np.linspace(0, len(g) - 1, max(1, int(len(g) * keep))).round().astype(np.int64))]
                     for g in per_scale]
    return np.concatenate(per_scale)


def label_windows(windows: np.ndarray, boxes: np.ndarray, num_classes: int, window_share: float = 0.2,
                  box_share: float = 0.6) -> np.ndarray:
    """(W,) labels of (W, 4) windows given (M, 5) boxes [class, x0, y0, x1, y1].

    Object o labels a window when o's box covers >= ``window_share`` of the window and the window
    holds >= ``box_share`` of o's box. Exactly one such object: its class; none: background
    (``num_classes``); several: :data:`DROPPED`.
    """
    labels = np.full(len(windows), num_classes, np.int64)
    if len(boxes) == 0:
        return labels
    x0 = np.maximum(windows[:, None, 0], boxes[None, :, 1])
    y0 = np.maximum(windows[:, None, 1], boxes[None, :, 2])
    x1 = np.minimum(windows[:, None, 2], boxes[None, :, 3])
    y1 = np.minimum(windows[:, None, 3], boxes[None, :, 4])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    window_area = ((windows[:, 2] - windows[:, 0]) * (windows[:, 3] - windows[:, 1]))[:, None]
    box_area = ((boxes[:, 3] - boxes[:, 1]) * (boxes[:, 4] - boxes[:, 2]))[None, :]
    shows = (inter >= window_share * window_area) & (inter >= box_share * box_area)
    count = shows.sum(1)
    labels[count == 1] = boxes[shows[count == 1].argmax(1), 0].astype(np.int64)
    labels[count > 1] = DROPPED
    return labels


def background_weights(labels: np.ndarray, background: int, share: float) -> np.ndarray:
    """(W,) weights giving background windows ``share`` of the total weight (objects weigh 1).

    Used as loss weights or as sampling probabilities; with no object or no background window all weigh 1.
    """
    weights = np.ones(len(labels), np.float64)
    is_background = labels == background
    n_background, n_object = int(is_background.sum()), int((~is_background).sum())
    if n_background and n_object and 0 < share < 1:
        weights[is_background] = share / (1 - share) * n_object / n_background
    return weights


def aggregate(probabilities: np.ndarray, image_index: np.ndarray, count: int, k: float) -> np.ndarray:
    """(N, C) image scores mean_i p(C | P_i)^k from (W, C) window probabilities and their (W,) image indices."""
    sums = np.zeros((count, probabilities.shape[1]), np.float64)
    np.add.at(sums, image_index, probabilities.astype(np.float64) ** k)
    windows = np.bincount(image_index, minlength=count).astype(np.float64)
    return (sums / np.maximum(windows, 1)[:, None]).astype(np.float32)


def image_boxes(images: ImageSet, index: int, image: np.ndarray) -> np.ndarray:
    """Boxes of image ``index``; a single-label image is one object whose box is the whole image."""
    if images.boxes is not None:
        return images.boxes[index]
    if images.labels[index] < 0:
        return np.zeros((0, 5), np.float32)
    return np.array([[images.labels[index], 0, 0, image.shape[1], image.shape[0]]], np.float32)


def crop_windows(image: np.ndarray, windows: np.ndarray, size: int) -> torch.Tensor:
    """(W, 3, size, size) crops of an (H, W, 3) uint8 image as floats in [0, 1], bilinearly resized in one call."""
    tensor = to_tensor(image).float().div_(255)
    rois = torch.cat([torch.zeros(len(windows), 1), torch.from_numpy(np.asarray(windows, np.float32))], 1)
    return roi_align(tensor[None], rois, output_size=size, spatial_scale=1.0, sampling_ratio=0, aligned=True)


def normalise(crops: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    return (crops - torch.tensor(pre.mean)[:, None, None]) / torch.tensor(pre.std)[:, None, None]


def extract_windows(model: nn.Module, images: ImageSet, pre: Preprocessing, config: PatchesConfig, batch_size: int = 256,
                    reporter: Optional[Reporter] = None, channels_last: bool = True, placement: Placement = Placement()) -> dict[str, np.ndarray]:
    """Frozen features of every window of every image: {"features" (W, D), "image" (W,), "labels" (W,), "windows" (W, 4)};
    the model runs on ``placement``'s device under its precision (its device and mode are restored). Images whose file
    does not decode leave ``images`` (:meth:`ImageSet.discard` names them) and "image" indexes the images that remain."""
    result, unreadable = _window_rows(model, images, pre, config, batch_size, reporter, channels_last, placement)
    images.discard(unreadable)
    return result


@torch.inference_mode()
def _window_rows(model: nn.Module, images: ImageSet, pre: Preprocessing, config: PatchesConfig, batch_size: int,
                 reporter: Optional[Reporter], channels_last: bool, placement: Placement) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    """(windows of the images that decode, "image" already counting from the images that remain; {index: why} of the
    others) for :func:`extract_windows`; ``images`` unchanged."""
    with placement.running(model) as device:
        return _extract_windows(model, images, pre, config, batch_size, reporter, channels_last, placement, device)


def _extract_windows(model: nn.Module, images: ImageSet, pre: Preprocessing, config: PatchesConfig, batch_size: int,
                     reporter: Optional[Reporter], channels_last: bool, placement: Placement, device: torch.device
                     ) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    features, owners, labels, boxes = [], [], [], []
    unreadable: dict[int, str] = {}
    pending: list[torch.Tensor] = []

    def flush() -> None:
        batch = torch.cat(pending)
        batch = placement.to_device(batch.pin_memory() if placement.pin_memory else batch, device)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        features.append(pooled_features(model, batch).float().cpu().numpy())
        pending.clear()

    for index, image in (reporter or Reporter(quiet=True)).track(images.decoded(unreadable), len(images), f"windows of {len(images)} images"):
        windows = grid_windows(image.shape[1], image.shape[0], config)
        labels.append(label_windows(windows, image_boxes(images, index, image), len(images.classes), config.window_share, config.box_share))
        owners.append(np.full(len(windows), index, np.int64))
        boxes.append(windows)
        crops = normalise(crop_windows(image, windows, pre.size), pre)
        for start in range(0, len(crops), batch_size):
            pending.append(crops[start:start + batch_size])
            if sum(len(p) for p in pending) >= batch_size:
                flush()
    if pending:
        flush()
    dim = getattr(model, "num_features", 0)
    owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
    return {"features": np.concatenate(features) if features else np.zeros((0, dim), np.float32),
            "image": positions_after_discard(owner, unreadable),
            "labels": np.concatenate(labels) if labels else np.zeros(0, np.int64),
            "windows": np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)}, unreadable


def cached_windows(model: nn.Module, images: ImageSet, pre: Preprocessing, config: PatchesConfig, batch_size: int = 256,
                   reporter: Optional[Reporter] = None, use_cache: bool = True, channels_last: bool = True,
                   placement: Placement = Placement()) -> tuple[dict[str, np.ndarray], bool]:
    """:func:`extract_windows` through the disk cache, keyed by weights, preprocessing, image set, boxes and window settings
    (and the precision, when reduced). Images that do not decode leave ``images`` as in :func:`extract_windows`; the entry
    keeps their indices and reasons, so a cached run names them too without opening a file."""
    if not use_cache:
        return extract_windows(model, images, pre, config, batch_size, reporter, channels_last, placement), False
    window_keys = {k: getattr(config, k) for k in ("scales", "max_lambda", "overlap", "max_windows", "window_share", "box_share")}
    boxes = hashlib.sha256(b"".join(np.ascontiguousarray(b).tobytes() for b in images.boxes)).hexdigest() if images.boxes else ""
    key = hashlib.sha256(json.dumps([weights_hash(model), pre.to_dict(), images.fingerprint(), images.classes, boxes, window_keys,
                                     images.labels.tolist(), "windows-v1", *placement.cache_tag()]).encode()).hexdigest()[:24]
    path = cache_dir() / "windows" / f"{key}.npz"
    if path.exists():
        with np.load(path) as stored:
            result = {name: stored[name] for name in stored.files}
        unreadable = dict(zip(result.pop("skipped_index", np.zeros(0, np.int64)).tolist(), result.pop("skipped_reason", np.zeros(0, str)).tolist()))
        images.discard(unreadable)
        return result, True
    result, unreadable = _window_rows(model, images, pre, config, batch_size, reporter, channels_last, placement)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as handle:
        np.savez(handle, **result, skipped_index=np.array(list(unreadable), np.int64), skipped_reason=np.array(list(unreadable.values()), str))
    os.replace(handle.name, path)
    images.discard(unreadable)
    return result, False
