"""``graft advise``: measure what the choice of route depends on, then recommend from the size x similarity matrix.

The matrix (CS231n transfer-learning notes; Yosinski et al. 2014; seed note 004 of this project):

=============  ===============================  ======================================================
               similar to the source            different from the source
=============  ===============================  ======================================================
small          linear probe on frozen features  careful: compare the cheap routes (LP-FT, probe, fine-tune)
large          fine-tune                        fine-tune everything (or pretrain on own data)
=============  ===============================  ======================================================

Measured: labelled images per class (size), and closeness to the backbone's source on a small seeded
split: linear-probe and k-NN accuracy of frozen features (how well the source features already separate
the classes, as chance-corrected accuracy) and the shift of the data's feature statistics from the source's
(the BatchNorm running statistics are the source data's per-channel means and variances; the mean
|mu_target - mu_source| / sigma_source over channels of the last BatchNorm layers). All steps are seeded.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np
import timm
import torch
from sklearn.neighbors import KNeighborsClassifier
from torch import nn

from graft.backbones import create_model
from graft.data.sources import load_images, require_classes
from graft.data.split import per_class_subset, stratified_split
from graft.data.transforms import TransformedImages, eval_transform, resolve_preprocessing
from graft.errors import GraftError
from graft.features import extract_features
from graft.lifecycle import Lifecycle, resolve_recipe
from graft.placement import Placement
from graft.probe import fit_probe
from graft.routes import route_names

LARGE_PER_CLASS = 500  # median labelled images per class from which a set counts as large
SIMILAR_SCORE = 0.5  # chance-corrected probe accuracy on the small split from which features "already fit"
SIMILAR_SHIFT = 0.4  # feature-statistics shift (in source standard deviations) up to which data looks like the source (see README)
MATRIX = {
    ("small", "similar"): (["linear", "lpft", "adapt"], "few labels and the source features already separate the classes: "
                           "a linear probe on frozen features is cheap and hard to beat; LP-FT is the next thing to try"),
    ("large", "similar"): (["finetune", "lpft", "linear"], "enough labels to adapt the pretrained features without overfitting: fine-tune"),
    ("large", "different"): (["finetune", "scratch", "lpft"], "enough labels and features that do not fit: fine-tune every layer "
                             "(e.g. --stages all:10), or pretrain on your own data (scratch is the baseline)"),
    ("small", "different"): (["lpft", "linear", "finetune"], "few labels and source features that fit poorly: no route is safe; "
                             "compare the cheap routes (graft advise --compare)"),
}


@dataclass
class Advice:
    """What was measured, the cell of the matrix, and the routes recommended (best first)."""

    images_per_class: dict[str, int]
    median_per_class: float
    size: str
    probe_accuracy: float
    knn_accuracy: float
    chance: float
    probe_score: float  # (probe accuracy - chance) / (1 - chance)
    feature_shift: Optional[float]
    similarity: str
    routes: list[str]
    reason: str
    split: dict[str, int]
    seed: int

    @property
    def measured(self) -> str:
        shift = "n/a (no BatchNorm)" if self.feature_shift is None else f"{self.feature_shift:.2f}"
        return (f"median {self.median_per_class:.0f} labelled images per class; on a small split ({self.split['fit']} fit / "
                f"{self.split['score']} scored) linear probe {100 * self.probe_accuracy:.1f}%, k-NN {100 * self.knn_accuracy:.1f}% "
                f"(chance {100 * self.chance:.1f}%, probe score {self.probe_score:.2f}), feature-statistics shift {shift}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "measured": self.measured}


def feature_shift(model: nn.Module, batches: Sequence[torch.Tensor], layers: int = 3, placement: Placement = Placement()) -> Optional[float]:
    """Mean over the last ``layers`` BatchNorm layers of mean_c |mu_c - running_mean_c| / sqrt(running_var_c + eps).

    ``batches``: preprocessed (B, 3, S, S) images, run on ``placement``. None when the network has no BatchNorm.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats][-layers:]
    if not norms:
        return None
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}

    def hook(index: int):
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = inputs[0].detach().float()
            dims = [d for d in range(x.ndim) if d != 1]
            sums[index] = sums.get(index, 0) + x.sum(dim=dims).double().cpu()  # the running statistics are compared on the CPU
            counts[index] = counts.get(index, 0) + x.numel() // x.shape[1]
        return record

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(norms)]
    try:
        with torch.inference_mode(), placement.running(model) as device:
            for batch in batches:
                model(placement.to_device(batch, device))
    finally:
        for handle in handles:
            handle.remove()
    shifts = []
    for i, norm in enumerate(norms):
        mean = sums[i] / counts[i]
        scale = torch.sqrt(norm.running_var.double() + norm.eps)
        shifts.append(float(((mean - norm.running_mean.double()).abs() / scale).mean()))
    return float(np.mean(shifts))


def advise(data: Any, backbone: Optional[str] = None, weights: Optional[str] = None, *, val: Any = None, per_class: int = 100,
           seed: int = 0, overrides: Sequence[str] = (), quiet: bool = True) -> Advice:
    """Measure ``data`` against the backbone and recommend routes (see the module docstring).

    ``per_class``: at most this many images of each class form the small split (half fit, half scored).
    """
    recipe = resolve_recipe(None, overrides, **{"model.backbone": backbone, "model.weights": weights, "runtime.seed": seed})
    life = Lifecycle.for_inference(quiet=quiet, recipe=recipe)
    images = load_images(data)
    if images.multilabel:
        raise GraftError(f"{images.origin}: advise covers single-label data; this set has several labels per image")
    require_classes(images)
    counts = images.class_counts()
    if val is not None:
        extra = load_images(val, classes=images.classes)
        counts = {c: n + extra.class_counts().get(c, 0) for c, n in counts.items()}
    median = float(np.median([n for n in counts.values() if n > 0]))
    size = "large" if median >= LARGE_PER_CLASS else "small"
    labelled = np.flatnonzero(images.labels >= 0)
    chosen = labelled[per_class_subset(images.labels[labelled], per_class, seed)]
    sample = images.subset(chosen)
    model = create_model(recipe.model.backbone, len(images.classes), weights=recipe.model.weights, pretrained=recipe.model.pretrained).eval()
    pre = resolve_preprocessing(timm.data.resolve_model_data_config(model), recipe.data)
    features = extract_features(model, sample, pre, reporter=life.reporter, channels_last=False, placement=life.placement)
    # split after extraction: images whose files do not decode have left the sample by now
    fit_index, score_index = stratified_split(sample.labels, 0.5, seed, sample.classes)
    fit_x, fit_y, score_x, score_y = features[fit_index], sample.labels[fit_index], features[score_index], sample.labels[score_index]
    probe = fit_probe(fit_x, fit_y, None, None, len(images.classes), recipe.linear, seed)
    probe_accuracy = float(((score_x @ probe.weight.T + probe.bias).argmax(1) == score_y).mean())
    unit = lambda x: x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)  # noqa: E731 - cosine k-NN
    knn = KNeighborsClassifier(n_neighbors=int(min(10, len(fit_y))), weights="distance").fit(unit(fit_x), fit_y)
    knn_accuracy = float((knn.predict(unit(score_x)) == score_y).mean())
    chance = float(np.bincount(score_y).max() / len(score_y))  # majority class: the accuracy of knowing nothing
    probe_score = (probe_accuracy - chance) / max(1 - chance, 1e-8)
    transform = eval_transform(pre)
    loader = life.placement.loader(TransformedImages(sample, transform), 64)
    shift = feature_shift(model, [batch[0] for batch in loader if batch is not None], placement=life.placement)
    similar = probe_score >= SIMILAR_SCORE and (shift is None or shift <= SIMILAR_SHIFT)
    similarity = "similar" if similar else "different"
    ranked, why = MATRIX[(size, similarity)]
    known = route_names()
    routes = [r for r in ranked if r in known]
    reason = (f"{size} ({median:.0f} per class {'>=' if size == 'large' else '<'} {LARGE_PER_CLASS}) and {similarity} "
              f"(probe score {probe_score:.2f} {'>=' if probe_score >= SIMILAR_SCORE else '<'} {SIMILAR_SCORE}"
              + ("" if shift is None else f", shift {shift:.2f} {'<=' if shift <= SIMILAR_SHIFT else '>'} {SIMILAR_SHIFT}")
              + f"): {why}")
    return Advice({c: int(n) for c, n in counts.items()}, median, size, probe_accuracy, knn_accuracy, chance, float(probe_score), shift,
                  similarity, routes, reason, {"fit": int(len(fit_index)), "score": int(len(score_index))}, seed)
