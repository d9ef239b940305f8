"""Frozen-backbone features, extracted once and cached on disk.

The cache key is (backbone weights hash, preprocessing, image-set fingerprint), so every
later run on the same images with the same backbone reuses them (DESIGN.md route 1).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from graft.backbones import weights_hash
from graft.console import Reporter
from graft.data.sources import ImageSet
from graft.data.transforms import Preprocessing, TransformedImages, eval_transform
from graft.placement import Placement

log = logging.getLogger("graft")


def cache_dir() -> Path:
    """``$GRAFT_CACHE`` or ``~/.cache/graft``."""
    return Path(os.environ.get("GRAFT_CACHE") or Path.home() / ".cache" / "graft")


def pooled_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B, D) pre-logit features through timm's interface."""
    return model.forward_head(model.forward_features(images), pre_logits=True)


@torch.inference_mode()
def map_batches(model: nn.Module, images: ImageSet, pre: Preprocessing, function: Callable[[torch.Tensor], torch.Tensor],
                batch_size: int = 128, reporter: Optional[Reporter] = None, channels_last: bool = True, what: str = "features",
                placement: Placement = Placement()) -> np.ndarray:
    """Concatenated ``function(batch)`` over eval-preprocessed ``images`` as CPU float32, the model in eval mode on
    ``placement``'s device under its precision (the model's mode and device are restored)."""
    with placement.running(model) as device:
        loader = torch.utils.data.DataLoader(TransformedImages(images, eval_transform(pre)), batch_size=batch_size,
                                             pin_memory=placement.pin_memory)
        outputs = []
        for batch, _ in (reporter or Reporter(quiet=True)).track(loader, len(loader), f"{what} {len(images)} images"):
            batch = placement.to_device(batch, device)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            outputs.append(function(batch).float().cpu())
    return torch.cat(outputs).numpy()


def extract_features(model: nn.Module, images: ImageSet, pre: Preprocessing, batch_size: int = 128,
                     reporter: Optional[Reporter] = None, channels_last: bool = True, placement: Placement = Placement()) -> np.ndarray:
    """(N, D) float32 pre-logit features of ``images``."""
    if len(images) == 0:
        return np.zeros((0, getattr(model, "num_features", 0)), np.float32)
    return map_batches(model, images, pre, lambda batch: pooled_features(model, batch), batch_size, reporter, channels_last,
                       placement=placement)


def cached_features(model: nn.Module, images: ImageSet, pre: Preprocessing, batch_size: int = 128,
                    reporter: Optional[Reporter] = None, use_cache: bool = True, channels_last: bool = True,
                    placement: Placement = Placement()) -> tuple[np.ndarray, bool]:
    """Features from the disk cache when present, else extracted and stored. Returns (features, was_cached).

    Features extracted under a reduced precision are cached apart (their key names it); float32 keys are unchanged.
    A damaged entry is reported, deleted and extracted again."""
    if not use_cache or len(images) == 0:
        return extract_features(model, images, pre, batch_size, reporter, channels_last, placement), False
    key = hashlib.sha256(json.dumps([weights_hash(model), pre.to_dict(), images.fingerprint(), "v1", *placement.cache_tag()]).encode()).hexdigest()[:24]
    path = cache_dir() / "features" / f"{key}.npy"
    if path.exists():
        features, problem = _read_entry(path, len(images), _feature_width(model, images, pre, channels_last, placement))
        if problem is None:
            return features, True
        # a damaged entry (killed writer, disk full, edited by hand) would fail every later run: drop it and extract again
        log.warning("feature cache entry %s is damaged (%s); deleted, extracting again", path, problem)
        path.unlink(missing_ok=True)
    features = extract_features(model, images, pre, batch_size, reporter, channels_last, placement)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        np.save(handle, features)
    os.replace(handle.name, path)
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
