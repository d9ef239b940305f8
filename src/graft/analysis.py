"""What transfer did to a network, computed as arrays (drawing lives in :mod:`graft.report`).

- per-layer relative weight change ||W - W0|| / ||W0|| against the starting (pretrained) weights,
  the question of Wang, Ramanan & Hebert 2017 ("Growing a Brain", sec. 1: "how much do the
  pretrained weights actually change?");
- the top-k maximally activating images of units of the top representation layer, before and after
  (Zeiler & Fergus 2014 / Girshick et al. 2014 style unit visualisation, here on pooled features);
- 2-D embeddings (t-SNE, van der Maaten & Hinton 2008; UMAP when installed) of features before and after.

Everything here depends only on a run directory (``model.json`` with the resolved recipe) and the
route registry, never on a route's internals, so every route (present or future) is analysed alike.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from graft.backbones import create_model, head_prefix
from graft.console import Reporter
from graft.data.sources import load_images
from graft.data.split import make_splits, per_class_subset
from graft.errors import GraftError
from graft.evaluation import Evaluation, evaluate_logits
from graft.features import extract_features
from graft.inference import run_lifecycle, run_scores
from graft.placement import Placement
from graft.recipe import Recipe
from graft.report import write_analysis_report
from graft.routes import find_route
from graft.report_data import read_records
from graft.run_report import write_run_report
from graft.runs import Run, load_run


@dataclass
class LayerChange:
    """Relative change of one weight tensor. ``status``: ``changed``; ``grown`` (compared on the
    pretrained slice of a widened tensor); ``new`` (no pretrained counterpart, ``relative`` is nan)."""

    name: str
    relative: float
    status: str = "changed"


def weight_change(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor],
                  skip_prefixes: Sequence[str] = ()) -> list[LayerChange]:
    """||W - W0||_F / ||W0||_F for every layer weight (tensors named ``*.weight`` with >= 2 dims: convolutions,
    linear layers) of ``state`` against ``reference``, in ``state`` order. ``skip_prefixes``: e.g. the new head."""
    changes = []
    for name, weight in state.items():
        if not name.endswith("weight") or weight.ndim < 2 or any(name.startswith(p) for p in skip_prefixes):
            continue
        old = reference.get(name)
        if old is None or old.ndim != weight.ndim or any(a < b for a, b in zip(weight.shape, old.shape)):
            changes.append(LayerChange(name, float("nan"), "new"))
            continue
        status = "changed" if old.shape == weight.shape else "grown"
        current = weight[tuple(slice(0, s) for s in old.shape)].double()
        old = old.double()
        norm = old.norm().item()
        relative = (current - old).norm().item() / norm if norm > 0 else float("nan")
        changes.append(LayerChange(name, relative, status))
    return changes


def top_activating(activations: np.ndarray, units: Sequence[int], k: int) -> np.ndarray:
    """(len(units), k) image indices with the highest activation of each unit, highest first.

    ``activations``: (N, U). Ties go to the lower image index (a stable order), so the choice is reproducible.
    """
    k = min(k, len(activations))
    return np.stack([np.argsort(-activations[:, u], kind="stable")[:k] for u in units]) if len(units) else np.zeros((0, k), np.int64)


def unit_change(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Per-unit change of the activation profile over the same images: ||a_u - b_u|| / (||b_u|| + eps).

    ``before`` (N, U), ``after`` (N, U'); units beyond U (added by a widening route) have no ``before``
    and score ``inf`` (they are the most changed of all).
    """
    shared = min(before.shape[1], after.shape[1])
    score = np.linalg.norm(after[:, :shared] - before[:, :shared], axis=0) / (np.linalg.norm(before[:, :shared], axis=0) + 1e-8)
    return np.concatenate([score, np.full(after.shape[1] - shared, np.inf)])


def choose_units(before: Optional[np.ndarray], after: np.ndarray, count: int) -> tuple[list[int], str]:
    """The ``count`` most changed units; when nothing changed (a frozen backbone) the most active ones."""
    if before is not None:
        score = unit_change(before, after)
        if np.nanmax(score) > 1e-6:
            return [int(u) for u in np.argsort(-score, kind="stable")[:count]], "most changed"
    return [int(u) for u in np.argsort(-after.mean(0), kind="stable")[:count]], "most active (no unit changed)"


def embed(features: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, D) -> (N, 2) by t-SNE (after standardising and PCA to at most 50 dimensions) or UMAP.

    ``method``: ``tsne``, ``umap`` or ``auto`` (UMAP when the ``umap-learn`` package is installed, else t-SNE).
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    if len(features) < 5:
        raise GraftError(f"an embedding needs at least 5 images, got {len(features)}; give more DATA")
    if method not in ("auto", "tsne", "umap"):
        raise GraftError(f"unknown embedding method '{method}'; choose auto, tsne or umap")
    x = StandardScaler().fit_transform(features.astype(np.float64))
    x = np.nan_to_num(x)
    components = min(50, x.shape[1], len(x) - 1)
    x = PCA(components, random_state=seed).fit_transform(x)
    if method in ("auto", "umap"):
        try:
            import umap  # type: ignore[import-not-found]

            return umap.UMAP(n_components=2, random_state=seed).fit_transform(x), "UMAP"
        except ImportError:
            if method == "umap":
                raise GraftError("UMAP needs the umap-learn package (pip install umap-learn); or use --embedding tsne") from None
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, (len(x) - 1) / 3))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x), "t-SNE"


def starting_model(meta: dict[str, Any], seed: int = 0) -> tuple[Optional[nn.Module], str]:
    """The run's starting network, rebuilt from its recipe (``model.backbone`` / ``model.weights``), and a note.

    Routes registered with ``pretrained=False`` start from random weights: their "before" is a fresh
    seeded initialisation (not bit-identical to the run's own start). When the weights cannot be had
    (hub offline, file moved) the model is None and the note says why.
    """
    model_config = meta.get("recipe", {}).get("model", {})
    backbone, weights = model_config.get("backbone", meta["backbone"]), model_config.get("weights")
    route = meta.get("route", "")
    spec = find_route(route)
    pretrained = model_config.get("pretrained", True) and (spec is None or spec.pretrained)
    try:
        if not pretrained:
            torch.manual_seed(seed)
            model = create_model(backbone, len(meta["classes"]), pretrained=False)
            return model.eval(), (f"run '{route}' starts from random weights: 'before' is a fresh seeded initialisation of {backbone} "
                                  "(not bit-identical to the run's own start)")
        model = create_model(backbone, len(meta["classes"]), weights=weights, pretrained=True)
        return model.eval(), f"'before' is {backbone}" + (f" with weights {weights}" if weights else " with its hub weights")
    except GraftError as error:
        return None, f"starting weights unavailable, so no before/after parts: {error}"


@dataclass
class Analysis:
    """Everything ``graft analyze`` computed for one run (arrays first; :func:`write_analysis_report` draws them)."""

    classes: list[str]
    labels: np.ndarray  # (N,) labels of the analysed images
    images: Any  # the analysed ImageSet (N images)
    after_embedding: np.ndarray  # (N, 2)
    before_embedding: Optional[np.ndarray]  # (N, 2), None without starting weights
    embedding_method: str
    units: list[int]
    unit_choice: str
    top_after: np.ndarray  # (len(units), k) image indices
    top_before: Optional[np.ndarray]
    changes: list[LayerChange]
    evaluation: Any  # graft.evaluation.Evaluation or None
    history: list[dict[str, Any]]
    notes: list[str]
    report: Any = None  # path of report.html once written
    features: Optional[np.ndarray] = None  # (N, D) top-layer features of the analysed images after transfer


def read_history(run_path: Any) -> list[dict[str, Any]]:
    """The per-epoch records of a run's ``metrics.jsonl`` (empty for routes without epochs)."""
    return [r for r in read_records(Path(run_path) / "metrics.jsonl") if r.get("event") == "epoch" and "train_accuracy" in r]


def analyse(run: Any, data: Any = None, units: Optional[Sequence[int]] = None, count: int = 4, k: int = 8,
            max_images: int = 600, method: str = "auto", seed: int = 0, reporter: Any = None,
            placement: Placement = Placement()) -> Analysis:
    """Compute the analysis of finished ``run`` (a path or :class:`graft.runs.Run`) on labelled ``data``.

    ``data`` defaults to the run's test set (its ``--test`` file, or the same seeded split again).
    At most ``max_images`` images (class-balanced, seeded) are embedded and searched for top activations;
    accuracy and the confusion matrix use all of ``data`` (or the run's saved test evaluation).
    """
    run = run if isinstance(run, Run) else load_run(run)
    notes: list[str] = []
    if run.meta.get("multilabel"):
        raise GraftError(f"{run.path}: analyze covers single-label runs; this run has several labels per image")
    if run.meta.get("ensemble"):
        members = ", ".join(str(run.path / m["run"]) for m in run.meta["ensemble"]["members"])
        raise GraftError(f"{run.path}: an ensemble has no one representation to analyse; analyze one of its members: {members}")
    images, evaluation = _analysis_data(run, data, notes)
    labelled = np.flatnonzero(images.labels >= 0)
    chosen = labelled[per_class_subset(images.labels[labelled], max(1, max_images // len(run.classes)), seed)][:max_images]
    subset = images.subset(chosen)
    if evaluation is None:
        evaluation = evaluate_logits(run_scores(run, images.subset(labelled), reporter=reporter, placement=placement),
                                     images.labels[labelled], run.classes)
    pre = run.preprocessing
    # the memory layout the run's own feature routes used, so "after" features are the very ones `graft fit` saw
    channels_last = bool(run.meta.get("recipe", {}).get("model", {}).get("channels_last", True))
    try:
        after = extract_features(run.model, subset, pre, reporter=reporter, channels_last=channels_last, placement=placement)
    except (AttributeError, TypeError) as error:
        raise GraftError(f"{run.path}: its model has no timm feature interface (forward_features/forward_head): {error}") from error
    before_model, note = starting_model(run.meta, seed)
    notes.append(note)
    before = extract_features(before_model, subset, pre, reporter=reporter, channels_last=channels_last,
                              placement=placement) if before_model is not None else None
    changes: list[LayerChange] = []
    if before_model is not None:
        skip = [head_prefix(run.model)]
        changes = weight_change(run.model.state_dict(), before_model.state_dict(), skip)
    if units:
        bad = [u for u in units if not 0 <= u < after.shape[1]]
        if bad:
            raise GraftError(f"units {bad} are outside the top layer's {after.shape[1]} units; give --units between 0 and {after.shape[1] - 1}")
        picked, choice = [int(u) for u in units], "chosen"
    else:
        picked, choice = choose_units(before, after, count)
    top_after = top_activating(after, picked, k)
    top_before = None
    if before is not None:
        shared = [u for u in picked if u < before.shape[1]]
        top_before = top_activating(before, shared, k) if len(shared) == len(picked) else None
    after_points, method_name = embed(after, method, seed)
    before_points = embed(before, method, seed)[0] if before is not None else None
    return Analysis(run.classes, subset.labels, subset, after_points, before_points, method_name, picked, choice,
                    top_after, top_before, changes, evaluation, read_history(run.path), notes, features=after)


def _analysis_data(run: Any, data: Any, notes: list[str]) -> tuple[Any, Any]:
    """(images, saved evaluation or None): ``data`` when given, else the run's own test set."""
    if data is not None:
        notes.append(f"images: {data}")
        return load_images(data, classes=run.classes), None
    recipe = run.meta.get("recipe", {})
    saved = run.path / "test_evaluation.json"
    evaluation = None
    if saved.exists():
        values = json.loads(saved.read_text())
        if "confusion" in values:
            evaluation = Evaluation(values["accuracy"], values["per_class_accuracy"], np.asarray(values["confusion"]),
                                    values["classes"], values["count"], values.get("loss", float("nan")))
    test = recipe.get("data", {}).get("test")
    if test:
        notes.append(f"images: the run's test set {test}")
        return load_images(test, classes=run.classes), evaluation
    try:
        _, _, split = make_splits(Recipe.from_dict(recipe), Reporter(quiet=True))
    except GraftError as error:
        raise GraftError(f"{run.path}: cannot rebuild the run's test split ({error}); give DATA: graft analyze RUN DATA") from error
    if split is None or not len(split):
        raise GraftError(f"{run.path}: the run has no test set; give DATA: graft analyze RUN DATA")
    notes.append("images: the run's test split (rebuilt from its recipe and seed)")
    return split, evaluation


def analyze(run: str | Path | Run, data: Any = None, out: Optional[str | Path] = None, units: Optional[Sequence[int]] = None,
            count: int = 4, k: int = 8, max_images: int = 600, embedding: str = "auto", seed: int = 0, quiet: bool = True,
            precision: Optional[str] = None, accelerator: Optional[str] = None) -> Analysis:
    """Analyse a finished run: embeddings before/after, top-k images of units, weight change, confusion, curves.

    Writes PNGs and one self-contained ``report.html`` to ``out`` (default RUN/analysis) and returns the
    :class:`Analysis` (its ``report`` attribute is the HTML path). Forward passes run on the lifecycle's device
    under ``precision`` (default: the run's).
    """
    run = run if isinstance(run, Run) else load_run(run)
    life = run_lifecycle(run, precision, accelerator, quiet)
    result = analyse(run, data, units, count, k, max_images, embedding, seed, life.reporter, life.placement)
    folder = Path(out) if out else run.path / "analysis"
    result.report = write_analysis_report(result, folder, f"graft analyze: {run.meta['route']} on {run.meta['backbone']} ({run.path.name})")
    if folder.resolve() == (run.path / "analysis").resolve() and (run.path / "report.html").exists():
        write_run_report(run.path)  # the run's own report now links to this one
    life.reporter.print(f"report: {result.report}")
    return result
