"""What every route receives (the data splits, the recipe, Fabric, the run) and returns."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import timm
from lightning_fabric import Fabric
from torch import nn

from graft.backbones import create_model
from graft.console import Reporter
from graft.data.sources import ImageSet
from graft.data.transforms import Preprocessing, resolve_preprocessing
from graft.features import cached_features
from graft.placement import Placement, Shard
from graft.recipe import Recipe
from graft.routes.registry import find_route
from graft.runs import RunDirectory
from graft.seeding import seeded


@dataclass
class RouteResult:
    """The trained classifier; ``test_logits`` when the route already has them (e.g. from cached features)."""

    model: nn.Module
    info: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    test_logits: Optional[np.ndarray] = None
    classes: Optional[list[str]] = None  # the model's outputs when they are not the data's classes (surrogate classes)
    preprocessing: Optional[Preprocessing] = None  # when not the backbone's (e.g. Exemplar-CNN patches)
    metrics: dict[str, Any] = field(default_factory=dict)  # the route's own summary numbers, added to the run's


@dataclass
class Context:
    recipe: Recipe
    fabric: Fabric
    train: ImageSet
    val: Optional[ImageSet]
    test: Optional[ImageSet]
    run: RunDirectory
    reporter: Reporter
    callbacks: Sequence[Callable[[dict[str, Any]], None]] = ()
    checkpoint: Optional[dict[str, Any]] = None
    unlabeled: Optional[ImageSet] = None  # --unlabeled images, every label -1 (routes registered with unlabeled=True)
    prepared: Any = None  # what the route's ``prepare`` hook returned before the run directory existed (None on resume)
    started: float = field(default_factory=time.time)

    def elapsed(self) -> float:
        """Seconds since the workflow started, rounded to 10 ms."""
        return round(time.time() - self.started, 2)

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    def model(self, pretrained: Optional[bool] = None) -> nn.Module:
        """A fresh classifier on the recipe's backbone (its weights file, a run, or the hub).

        ``pretrained`` defaults to what the route registered (scratch: random weights).
        """
        spec = find_route(self.recipe.route)
        m = self.recipe.model
        pretrained = (spec is None or spec.pretrained) if pretrained is None else pretrained
        with seeded(self.recipe.runtime.seed, "new model"):  # the same weights however many models were built before
            return create_model(m.backbone, self.num_classes, weights=m.weights if pretrained else None,
                                pretrained=pretrained and m.pretrained, head_init=m.head_init)

    @property
    def placement(self) -> Placement:
        """Fabric's device and the run's precision: where every forward pass outside the training loop runs."""
        return Placement.for_fabric(self.fabric, self.recipe.runtime.precision, self.recipe.data.num_workers)

    def preprocessing(self, model: nn.Module) -> Preprocessing:
        return resolve_preprocessing(timm.data.resolve_model_data_config(model), self.recipe.data)

    def features(self, model: nn.Module, images: ImageSet) -> np.ndarray:
        """Cached frozen features (N, D) of ``images``; under DDP each rank extracts its share (the ``features`` event
        of metrics.jsonl records how many images each rank ran)."""
        shard = Shard(self.fabric)
        features, cached = cached_features(model, images, self.preprocessing(model), self.recipe.data.batch_size * 2,
                                           self.reporter, self.recipe.linear.cache, self.recipe.model.channels_last, self.placement, shard)
        self.reporter.print(f"features of {len(images)} images: {'from cache' if cached else 'extracted'}")
        self.run.log(event="features", images=len(images), cached=cached, images_this_rank=shard.processed,
                     images_per_rank=shard.counts(shard.processed))
        return features
