"""Frozen-backbone features, extracted once and cached on disk.

The cache key is (backbone weights hash, preprocessing, image-set fingerprint), so every
later run on the same images with the same backbone reuses them (DESIGN.md route 1).
Outputs are written batch by batch into one preallocated float32 array (a memory-mapped .npy for large sets),
never collected in a list and concatenated; under DDP each rank extracts its share (:class:`graft.placement.Shard`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from graft.backbones import weights_hash
from graft.caches import cache_dir
from graft.console import Reporter
from graft.data.sources import ImageSet
from graft.data.transforms import Preprocessing, TransformedImages, eval_transform
from graft.placement import Placement, Shard

MEMMAP_BYTES = 1 << 30  # outputs above 1 GB go to a memory-mapped file instead of RAM

log = logging.getLogger("graft")


def pooled_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B, D) pre-logit features through timm's interface."""
    return model.forward_head(model.forward_features(images), pre_logits=True)


def output_array(rows: int, shape: Sequence[int], memmap_bytes: int = MEMMAP_BYTES) -> np.ndarray:
    """An empty float32 (rows, *shape) array: in memory, or when larger than ``memmap_bytes`` a memory-mapped .npy in
    the cache folder's scratch/ (unlinked at once where the OS allows: the mapping keeps it until the array is freed)."""
    if rows * math.prod(shape) * 4 <= memmap_bytes:
        return np.empty((rows, *shape), np.float32)
    folder = cache_dir() / "scratch"
    folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=folder, suffix=".npy")
    os.close(handle)
    array = np.lib.format.open_memmap(name, mode="w+", dtype=np.float32, shape=(rows, *shape))
    with contextlib.suppress(OSError):  # Windows refuses to unlink a mapped file: it then stays in scratch/
        os.unlink(name)
    return array


@torch.inference_mode()
def map_batches(model: nn.Module, images: ImageSet, pre: Preprocessing, function: Callable[[torch.Tensor], torch.Tensor],
                batch_size: int = 128, reporter: Optional[Reporter] = None, channels_last: bool = True, what: str = "features",
                placement: Placement = Placement(), shard: Shard = Shard(), memmap_bytes: int = MEMMAP_BYTES) -> np.ndarray:
    """``function(batch)`` over eval-preprocessed ``images`` as one CPU float32 array, the model in eval mode on
    ``placement``'s device under its precision (the model's mode and device are restored), images decoded in
    ``placement``'s loader workers. Rows are written into an :func:`output_array` as batches come. Under DDP
    (``shard`` of several ranks) each rank runs its share and every rank returns all rows in the original order."""
    mine = images.subset(shard.indices(len(images))) if shard.active else images
    local: Optional[np.ndarray] = None
    filled = 0
    with placement.running(model) as device:
        loader = placement.loader(TransformedImages(mine, eval_transform(pre)), batch_size)
        for batch, _ in (reporter or Reporter(quiet=True)).track(loader, len(loader), f"{what} {len(mine)} images"):
            batch = placement.to_device(batch, device)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            result = function(batch).float().cpu().numpy()
            if local is None:
                local = output_array(len(mine), result.shape[1:], memmap_bytes)
            local[filled:filled + len(result)] = result
            filled += len(result)
    shard.processed += filled
    if not shard.active:
        return local if local is not None else np.zeros((0, 0), np.float32)
    shape = tuple(shard.broadcast(None if local is None else local.shape[1:]))  # rank 0 has rows whenever any rank has
    out = output_array(len(images), shape, memmap_bytes)
    shard.gather_rows(local if local is not None else np.zeros((0, *shape), np.float32), out)
    return out


def extract_features(model: nn.Module, images: ImageSet, pre: Preprocessing, batch_size: int = 128,
                     reporter: Optional[Reporter] = None, channels_last: bool = True, placement: Placement = Placement(),
                     shard: Shard = Shard()) -> np.ndarray:
    """(N, D) float32 pre-logit features of ``images`` (``shard``: this rank's share under DDP, see :func:`map_batches`)."""
    if len(images) == 0:
        return np.zeros((0, getattr(model, "num_features", 0)), np.float32)
    return map_batches(model, images, pre, lambda batch: pooled_features(model, batch), batch_size, reporter, channels_last,
                       placement=placement, shard=shard)


def cached_features(model: nn.Module, images: ImageSet, pre: Preprocessing, batch_size: int = 128,
                    reporter: Optional[Reporter] = None, use_cache: bool = True, channels_last: bool = True,
                    placement: Placement = Placement(), shard: Shard = Shard()) -> tuple[np.ndarray, bool]:
    """Features from the disk cache when present, else extracted and stored. Returns (features, was_cached).

    Features extracted under a reduced precision are cached apart (their key names it); float32 keys are unchanged.
    A damaged entry is reported, deleted and extracted again. Under DDP every rank extracts its share, all get every
    feature, and rank 0 alone writes the cache file."""
    if not use_cache or len(images) == 0:
        return extract_features(model, images, pre, batch_size, reporter, channels_last, placement, shard), False
    key = hashlib.sha256(json.dumps([weights_hash(model), pre.to_dict(), images.fingerprint(), "v1", *placement.cache_tag()]).encode()).hexdigest()[:24]
    path = cache_dir() / "features" / f"{key}.npy"
    features, problem = None, "absent"
    if path.exists():
        features, problem = _read_entry(path, len(images), _feature_width(model, images, pre, channels_last, placement))
    if shard.all_true(problem is None):  # one answer for all ranks: the extraction below is collective
        return features, True
    if problem != "absent" and shard.rank == 0:
        # a damaged entry (killed writer, disk full, edited by hand) would fail every later run: drop it and extract again
        log.warning("feature cache entry %s is damaged (%s); deleted, extracting again", path, problem)
        path.unlink(missing_ok=True)
    features = extract_features(model, images, pre, batch_size, reporter, channels_last, placement, shard)
    if shard.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
            np.save(handle, features)
        os.replace(handle.name, path)
    shard.barrier()  # no rank looks for this file again before it is complete
    return features, False


def _feature_width(model: nn.Module, images: ImageSet, pre: Preprocessing, channels_last: bool, placement: Placement) -> int:
    """D of ``model``'s pooled features, from one image (cheap next to the N an entry saves)."""
    return int(extract_features(model, images.subset([0]), pre, 1, None, channels_last, placement).shape[1])


def _read_entry(path: Path, rows: int, width: int) -> tuple[Optional[np.ndarray], Optional[str]]:
    """(features, None) when the entry at ``path`` is a finite float32 (rows, width) array, else (None, why not)."""
    try:
        features = np.load(path, allow_pickle=False)
    except Exception as error:  # truncated files raise ValueError, EOFError or OSError; object arrays need pickle (refused)
        return None, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'unreadable'}"
    if not isinstance(features, np.ndarray) or features.dtype != np.float32 or features.shape != (rows, width):
        return None, f"holds {getattr(features, 'dtype', type(features).__name__)} {getattr(features, 'shape', '')}, expected float32 ({rows}, {width})"
    if not np.isfinite(features).all():
        return None, "holds NaN or infinite values"
    return features, None
