"""``graft features``: frozen-feature evaluation protocols of a run's backbone.

* ``exemplar`` (Dosovitskiy et al. 2014, sec. 4.1): the activations of every layer but the
  softmax, each max-pooled over the 4 image quadrants, concatenated; a linear SVM on top.
* ``linear``: the backbone's pooled pre-logit features, the same SVM.

The SVM (scikit-learn ``LinearSVC`` on standardised features) has its C chosen on a validation
split, is refit on train + validation with that C, and is scored on the test split.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from torch import nn
from torch.nn import functional as F

from graft.console import Reporter
from graft.data.sources import ImageSet
from graft.data.split import make_splits
from graft.data.transforms import Preprocessing
from graft.errors import GraftError
from graft.features import map_batches, pooled_features
from graft.inference import run_lifecycle
from graft.placement import Placement
from graft.recipe import Recipe
from graft.runs import Run, load_run

PROTOCOLS = ("exemplar", "linear")
C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def quadrant_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B, D): every layer's activation map max-pooled over its 4 quadrants (vectors kept as they are)."""
    if hasattr(model, "layer_outputs"):
        outputs = model.layer_outputs(images)
    elif hasattr(model, "forward_intermediates"):
        maps = model.forward_intermediates(images, intermediates_only=True)
        outputs = [*maps, pooled_features(model, images)]
    else:
        raise GraftError(f"{type(model).__name__} does not expose its layers; use --protocol linear, or an Exemplar-CNN or timm backbone")
    return torch.cat([F.adaptive_max_pool2d(o, 2).flatten(1) if o.ndim == 4 else o.flatten(1) for o in outputs], 1)


def protocol_features(model: nn.Module, images: ImageSet, pre: Preprocessing, protocol: str, batch_size: int = 128,
                      reporter: Optional[Reporter] = None, placement: Placement = Placement()) -> np.ndarray:
    """(N, D) features of ``images`` under ``protocol`` (the model in eval mode on ``placement``, unchanged)."""
    if protocol not in PROTOCOLS:
        raise GraftError(f"unknown protocol '{protocol}'; choose one of {', '.join(PROTOCOLS)}")
    function = (lambda batch: quadrant_features(model, batch)) if protocol == "exemplar" else (lambda batch: pooled_features(model, batch))
    return map_batches(model, images, pre, function, batch_size, reporter, channels_last=False, what=f"{protocol} features",
                       placement=placement)


@dataclass
class SVMResult:
    """Test accuracy of the linear SVM, the C chosen and every C's validation accuracy."""

    accuracy: float
    c: float
    scores: dict[float, float] = field(default_factory=dict)
    dimensions: int = 0
    train_count: int = 0
    val_count: int = 0
    test_count: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _svm(c: float, seed: int, primal: bool):
    # the primal solver is much faster when there are more images than features (the usual case here)
    return make_pipeline(StandardScaler(), LinearSVC(C=c, dual=not primal, max_iter=5000, random_state=seed))


def svm_protocol(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, c_grid: Sequence[float] = C_GRID, seed: int = 0) -> SVMResult:
    """Choose C on the validation features (ties -> smaller C), refit on train + validation, score on test."""
    started = time.time()
    primal = len(train_x) > train_x.shape[1]
    scores = {float(c): float((_svm(c, seed, primal).fit(train_x, train_y).predict(val_x) == val_y).mean()) for c in c_grid}
    best = max(c_grid, key=lambda c: (scores[float(c)], -c))
    final = _svm(best, seed, primal).fit(np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y]))
    accuracy = float((final.predict(test_x) == test_y).mean())
    return SVMResult(accuracy, float(best), scores, train_x.shape[1], len(train_y), len(val_y), len(test_y), round(time.time() - started, 2))


def evaluate_features(run: str | Path | Run, data: Any, protocol: str = "exemplar", test: Any = None, val_fraction: float = 0.15,
             test_fraction: float = 0.2, seed: int = 0, quiet: bool = True, out: Optional[str | Path] = None,
             precision: Optional[str] = None, accelerator: Optional[str] = None) -> SVMResult:
    """Evaluate ``run``'s frozen backbone on labelled ``data`` by ``protocol`` (see module docstring); features are
    extracted on the lifecycle's device under ``precision`` (default: the run's).

    ``test``: a test DATA; otherwise ``test_fraction`` of ``data`` is held out (seeded, stratified).
    Writes ``features-PROTOCOL.json`` into ``out`` (default RUN/evaluations/<data name>).
    """
    run = run if isinstance(run, Run) else load_run(run)
    life = run_lifecycle(run, precision, accelerator, quiet)
    recipe = Recipe().override([f"data.train={json.dumps(str(data))}", f"data.test={json.dumps(None if test is None else str(test))}",
                                f"data.val_fraction={val_fraction}", f"data.test_fraction={test_fraction}", f"runtime.seed={seed}"])
    if val_fraction <= 0:
        raise GraftError("the SVM's C is chosen on a validation split; give val_fraction > 0")
    train, val, held = make_splits(recipe, life.reporter)
    if held is None or not len(held):
        raise GraftError("no test images: pass --test DATA or a test fraction > 0")
    model = run.model.eval()
    pre = run.preprocessing
    x = {name: protocol_features(model, part, pre, protocol, reporter=life.reporter, placement=life.placement) for name, part in (("train", train), ("val", val), ("test", held))}
    result = svm_protocol(x["train"], train.labels, x["val"], val.labels, x["test"], held.labels, seed=seed)
    result.extra = {"protocol": protocol, "run": str(run.path), "data": str(data), "test": None if test is None else str(test)}
    folder = Path(out) if out else run.path / "evaluations" / Path(str(data)).stem
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"features-{protocol}.json").write_text(json.dumps(asdict(result), indent=2))
    return result
