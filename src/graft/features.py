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
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from graft.backbones import weights_hash
from graft.caches import cache_dir
from graft.console import Reporter
from graft.data.sources import ImageSet, decode_problem
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


def map_batches(model: nn.Module, images: ImageSet, pre: Preprocessing, function: Callable[[torch.Tensor], torch.Tensor],
                batch_size: int = 128, reporter: Optional[Reporter] = None, channels_last: bool = True, what: str = "features",
                placement: Placement = Placement(), shard: Shard = Shard(), memmap_bytes: int = MEMMAP_BYTES) -> np.ndarray:
    """``function(batch)`` over eval-preprocessed ``images`` as one CPU float32 array, the model in eval mode on
    ``placement``'s device under its precision (the model's mode and device are restored), images decoded in
    ``placement``'s loader workers. Rows are written into an :func:`output_array` as batches come. Under DDP
    (``shard`` of several ranks) each rank runs its share and every rank returns all rows in the original order.

    Images whose file fails to decode are skipped: they leave ``images`` (in place, :meth:`ImageSet.discard`, which
    names them in its ``skipped``), and the rows returned are those of the images that remain, in order."""
    rows, unreadable = _rows(model, images, pre, function, batch_size, reporter, channels_last, what, placement, shard, memmap_bytes)
    images.discard(unreadable)
    return rows


@torch.inference_mode()
def _rows(model: nn.Module, images: ImageSet, pre: Preprocessing, function: Callable[[torch.Tensor], torch.Tensor], batch_size: int,
          reporter: Optional[Reporter], channels_last: bool, what: str, placement: Placement, shard: Shard, memmap_bytes: int
          ) -> tuple[np.ndarray, dict[int, str]]:
    """(rows of the images that decode, {index: reason} of those that do not) for :func:`map_batches`; ``images`` unchanged."""
    mine = images.subset(shard.indices(len(images))) if shard.active else images
    dataset = TransformedImages(mine, eval_transform(pre), indexed=True)  # each row goes to its image's place
    local: Optional[np.ndarray] = None
    with placement.running(model) as device:
        loader = placement.loader(dataset, batch_size)
        for batch in (reporter or Reporter(quiet=True)).track(loader, len(loader), f"{what} {len(mine)} images"):
            if batch is None:  # no image of this batch decoded
                continue
            pixels, _, positions = batch
            pixels = placement.to_device(pixels, device)
            if channels_last:
                pixels = pixels.contiguous(memory_format=torch.channels_last)
            result = function(pixels).float().cpu().numpy()
            if local is None:
                local = output_array(len(mine), result.shape[1:], memmap_bytes)
            local[positions.numpy()] = result
        if local is None:  # nothing of this share decoded (or it is empty): the shape of a row from one blank image
            blank = torch.zeros(1, 3, pre.size, pre.size, device=device)
            local = output_array(len(mine), function(blank).float().shape[1:], memmap_bytes)
    missing = dataset.unreadable_indices()
    shard.processed += len(mine) - len(missing)
    if shard.active:
        out = output_array(len(images), local.shape[1:], memmap_bytes)
        shard.gather_rows(local, out)
        flags = np.zeros((len(images), 1), np.float32)  # every rank's unreadable images, by their index in ``images``
        mine_flags = np.zeros((len(mine), 1), np.float32)
        mine_flags[missing] = 1
        shard.gather_rows(mine_flags, flags)
        local, missing = out, np.flatnonzero(flags[:, 0])
    reasons = {int(index): decode_problem(images.paths[index]) for index in missing} if len(missing) else {}
    return _without_rows(local, missing, memmap_bytes), reasons


def _without_rows(array: np.ndarray, drop: np.ndarray, memmap_bytes: int, chunk_rows: int = 4096) -> np.ndarray:
    """``array`` without the rows ``drop``, copied a chunk at a time into a new :func:`output_array` (it may be mapped)."""
    if not len(drop):
        return array
    keep = np.setdiff1d(np.arange(len(array)), drop)
    out = output_array(len(keep), array.shape[1:], memmap_bytes)
    for start in range(0, len(keep), chunk_rows):
        out[start:start + chunk_rows] = array[keep[start:start + chunk_rows]]
    return out


def extract_features(model: nn.Module, images: ImageSet, pre: Preprocessing, batch_size: int = 128,
                     reporter: Optional[Reporter] = None, channels_last: bool = True, placement: Placement = Placement(),
                     shard: Shard = Shard()) -> np.ndarray:
    """(N, D) float32 pre-logit features of ``images`` (``shard``: this rank's share under DDP; images that do not decode
    leave ``images``: see :func:`map_batches`)."""
    rows, unreadable = _feature_rows(model, images, pre, batch_size, reporter, channels_last, placement, shard)
    images.discard(unreadable)
    return rows


def _feature_rows(model: nn.Module, images: ImageSet, pre: Preprocessing, batch_size: int, reporter: Optional[Reporter],
                  channels_last: bool, placement: Placement, shard: Shard) -> tuple[np.ndarray, dict[int, str]]:
    if len(images) == 0:
        return np.zeros((0, getattr(model, "num_features", 0)), np.float32), {}
    return _rows(model, images, pre, lambda batch: pooled_features(model, batch), batch_size, reporter, channels_last, "features",
                 placement, shard, MEMMAP_BYTES)


def cached_features(model: nn.Module, images: ImageSet, pre: Preprocessing, batch_size: int = 128,
                    reporter: Optional[Reporter] = None, use_cache: bool = True, channels_last: bool = True,
                    placement: Placement = Placement(), shard: Shard = Shard()) -> tuple[np.ndarray, bool]:
    """Features from the disk cache when present, else extracted and stored. Returns (features, was_cached).

    Features extracted under a reduced precision are cached apart (their key names it); float32 keys are unchanged.
    A damaged entry is reported, deleted and extracted again. Under DDP every rank extracts its share, all get every
    feature, and rank 0 alone writes the cache file. Images that do not decode leave ``images`` as in
    :func:`map_batches`; the entry keeps their names and reasons beside it (KEY.skipped.json), so a cached run names
    them too without opening a file."""
    if not use_cache or len(images) == 0:
        return extract_features(model, images, pre, batch_size, reporter, channels_last, placement, shard), False
    key = hashlib.sha256(json.dumps([weights_hash(model), pre.to_dict(), images.fingerprint(), "v1", *placement.cache_tag()]).encode()).hexdigest()[:24]
    path = cache_dir() / "features" / f"{key}.npy"
    skipped_path = path.with_name(f"{key}.skipped.json")
    features, problem, unreadable = None, "absent", {}
    if path.exists():
        unreadable = _read_skipped(skipped_path, len(images))
        features, problem = _read_entry(path, len(images) - len(unreadable), _feature_width(model, pre, placement))
    if shard.all_true(problem is None):  # one answer for all ranks: the extraction below is collective
        images.discard(unreadable)
        return features, True
    if problem != "absent" and shard.rank == 0:
        # a damaged entry (killed writer, disk full, edited by hand) would fail every later run: drop it and extract again
        log.warning("feature cache entry %s is damaged (%s); deleted, extracting again", path, problem)
        path.unlink(missing_ok=True)
    features, unreadable = _feature_rows(model, images, pre, batch_size, reporter, channels_last, placement, shard)
    if shard.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        if unreadable:  # written before the features: an entry that exists has its list of skipped images
            _write_atomically(skipped_path, lambda handle: handle.write(json.dumps({str(i): r for i, r in unreadable.items()}).encode()))
        else:
            skipped_path.unlink(missing_ok=True)
        _write_atomically(path, lambda handle: np.save(handle, features))
    shard.barrier()  # no rank looks for this file again before it is complete
    images.discard(unreadable)
    return features, False


def _write_atomically(path: Path, write: Callable[[Any], Any]) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        write(handle)
    os.replace(handle.name, path)  # a reader sees the old file or the new one, never a part


def _read_skipped(path: Path, rows: int) -> dict[int, str]:
    """{index: reason} of the images an entry skipped (none when the file is absent or unreadable: the entry's row count
    then decides whether it is whole)."""
    try:
        stored = json.loads(path.read_text()) if path.exists() else {}
        return {int(index): str(reason) for index, reason in stored.items() if 0 <= int(index) < rows}
    except (OSError, ValueError, AttributeError):
        return {}


def _feature_width(model: nn.Module, pre: Preprocessing, placement: Placement) -> int:
    """D of ``model``'s pooled features, from one blank image (no file is opened: the first image may not decode)."""
    with torch.inference_mode(), placement.running(model) as device:
        return int(pooled_features(model, torch.zeros(1, 3, pre.size, pre.size, device=device)).shape[1])


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
