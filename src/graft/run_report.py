"""The run report (``RUN/report.html``) and the notebook views of a run: drawn from the run's files alone
(``model.json``, ``metrics.jsonl``, ``test_evaluation.json`` and what :func:`graft.report_data.save_report_data`
kept), so ``graft analyze`` and ``Run.report()`` can draw it again with what was added since.

Computation is in :mod:`graft.report_data`; ``plot_*`` draw it on an optional axis of a pyplot-free
:class:`matplotlib.figure.Figure`.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from graft.errors import GraftError
from graft.recipe import Recipe
from graft.report import embed_image, new_axes, plot_confusion, plot_per_class, save_figure, table, write_html
from graft.report_data import (ConfusedPair, DataSummary, LearningCurves, TopLosses, learning_curves, load_data_summary,
                               load_top_losses, most_confused, read_records)

PLOT_KINDS = ("curves", "confusion", "per_class", "top_losses")


def plot_learning_curves(curves: LearningCurves, ax: Optional[Axes] = None, metric: str = "accuracy") -> Axes:
    """Train and validation ``metric`` (accuracy | loss) per epoch from epoch 0 (the starting model, validation only),
    stage changes as dotted lines and the kept epoch as a dashed line with a star."""
    ax = ax or new_axes(6, 3.5)
    train = np.asarray(getattr(curves, f"train_{metric}"), float)
    val = np.asarray(getattr(curves, f"val_{metric}"), float)
    epochs = np.asarray(curves.epochs)
    ax.plot(epochs[~np.isnan(train)], train[~np.isnan(train)], marker="o", markersize=3, label="train")
    if curves.validated:
        ax.plot(epochs[~np.isnan(val)], val[~np.isnan(val)], marker="o", markersize=3, label="validation")
    for start in curves.stage_starts:
        ax.axvline(start - 0.5, color="grey", linestyle=":", linewidth=1)
    if curves.kept is not None and curves.kept in curves.epochs:
        position = curves.epochs.index(curves.kept)
        series = val if curves.validated else train
        ax.axvline(curves.kept, color="tab:red", linestyle="--", linewidth=1)
        if not math.isnan(series[position]):
            ax.plot([curves.kept], [series[position]], marker="*", markersize=12, color="tab:red", linestyle="none",
                    label=f"kept: epoch {curves.kept}")
    ax.set_xlabel("epoch (0: starting model)" if 0 in curves.epochs else "epoch")
    ax.set_ylabel(metric)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(epochs):
        ax.legend(fontsize=8)
    return ax


def curves_figure(curves: LearningCurves) -> Figure:
    """Accuracy (left) and loss (right) curves side by side."""
    axes = Figure(figsize=(11, 3.6)).subplots(1, 2)
    plot_learning_curves(curves, axes[0], "accuracy")
    plot_learning_curves(curves, axes[1], "loss")
    return axes[0].figure


def plot_top_losses(top: TopLosses, classes: list[str], figure: Optional[Figure] = None, columns: int = 4) -> Figure:
    """fastai-style gallery: each image titled "predicted / true / loss / probability of the prediction"."""
    rows = max(1, math.ceil(len(top) / columns))
    figure = figure or Figure(figsize=(2.4 * columns, 2.7 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for slot, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if slot < len(top):
            ax.imshow(top.thumbnails[slot])
            # class names are data, not TeX: parse_math=False keeps a name such as "$x" from breaking the drawing
            ax.set_title(f"{classes[top.predicted[slot]]} / {classes[top.true[slot]]}\n"
                         f"{top.loss[slot]:.2f} / {top.probability[slot]:.2f}", fontsize=8, parse_math=False)
    figure.suptitle("predicted / true; loss / probability of the prediction", fontsize=9)
    return figure


def percent(value: float) -> str:
    return "-" if value is None or value != value else f"{100 * value:.1f} %"


def duration(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 1 h 02 min."""
    if seconds is None or seconds != seconds:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def formatted(key: str, value: Any) -> str:
    """A metric as a reader wants it: accuracies and mAP in %, seconds as a duration, losses to 4 places."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if key == "seconds" or key.endswith("_seconds"):
        return duration(float(value))
    if "accuracy" in key or key.endswith("mAP") or key.endswith("_ap"):
        return percent(float(value))
    return str(value) if isinstance(value, int) else "-" if value != value else f"{value:.4f}"


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def recipe_lines(recipe: dict[str, Any]) -> list[str]:
    """The recipe in a few lines: route, model, data, schedule, then every other key that differs from the defaults."""
    flat, defaults = _flat(recipe), _flat(Recipe().to_dict())
    shown = {"route", "model.backbone", "model.weights", "data.image_size", "data.batch_size", "train.stages", "train.lr",
             "train.augment.preset", "runtime.seed", "runtime.precision"}
    lines = [f"route {flat.get('route')} on {flat.get('model.backbone')}" + (f" (weights {flat['model.weights']})" if flat.get("model.weights") else ""),
             f"images {flat.get('data.image_size') or 'at the backbone size'} px, batch {flat.get('data.batch_size')}, "
             f"augmentation {flat.get('train.augment.preset')}",
             f"stages {flat.get('train.stages')}, learning rate {flat.get('train.lr')}, seed {flat.get('runtime.seed')}, "
             f"precision {flat.get('runtime.precision')}"]
    ignored = {"data.train", "data.val", "data.test", "runtime.out", "runtime.quiet", "runtime.progress"}
    changed = [f"{k}={json.dumps(v)}" for k, v in flat.items() if k not in shown | ignored and k in defaults and defaults[k] != v]
    if changed:
        lines.append("other keys changed from the defaults: " + ", ".join(changed))
    return lines


def _data_section(summary: DataSummary) -> str:
    classes = list(dict.fromkeys(c for counts in summary.counts.values() for c in counts))
    rows = [{"class": c, **{split: counts.get(c, 0) for split, counts in summary.counts.items()}} for c in classes]
    rows.append({"class": "all", **{split: sum(counts.values()) for split, counts in summary.counts.items()}})
    body = table(rows, "images per split and class", id="data")
    if summary.skipped:
        shown = summary.skipped[:50]
        body += table(shown, f"{len(summary.skipped)} unreadable files skipped", id="skipped")
        if len(summary.skipped) > len(shown):
            body += f"<p>... and {len(summary.skipped) - len(shown)} more (model.json lists them all)</p>"
    return body


def _confused_section(pairs: list[ConfusedPair]) -> str:
    if not pairs:
        return "<p>No test image was confused with another class.</p>"
    return table([{"true class": p.true, "predicted as": p.predicted, "images": p.count, "share of the true class": percent(p.rate)}
                  for p in pairs], id="confused")


def _top_losses_section(top: TopLosses, classes: list[str]) -> str:
    return table([{"image": name, "true": classes[t], "predicted": classes[p], "probability": percent(float(q)),
                   "probability of the true class": percent(float(r)), "loss": f"{float(loss):.3f}"}
                  for name, t, p, q, r, loss in zip(top.names, top.true, top.predicted, top.probability, top.true_probability, top.loss)],
                 id="top-losses")


def _auto_section(auto: dict[str, Any]) -> str:
    """Why route auto returned this model, its measurements, and the candidates' validation leaderboard."""
    rows = [{"route": r["route"], "status": r["status"], "val accuracy": "-" if r["val_accuracy"] is None else percent(r["val_accuracy"]),
             "seconds": r["seconds"], "run or reason": r["run"] or r["reason"]} for r in auto["leaderboard"]]
    combined = auto.get("ensemble", {})
    if combined.get("tried"):
        rows.append({"route": "ensemble " + " + ".join(f"{w:.2f} x {n}" for n, w in combined["weights"].items()),
                     "status": "used" if combined["used"] else "not used", "val accuracy": percent(combined["val_accuracy"]),
                     "seconds": "-", "run or reason": combined["method"]})
    return (f"<p id='auto-why'>{html.escape(auto['why'])}</p><p>measured: {html.escape(auto['measurements']['measured'])}</p>"
            f"<p>test-time augmentation: {html.escape(auto['tta']['used'])} ({html.escape(auto['tta']['reason'])}); "
            f"chosen on the {html.escape(auto['selected_on'])}</p>" + table(rows, id="auto-leaderboard"))


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    return json.loads(path.read_text()) if path.exists() else None


def write_run_report(folder: Path) -> Path:
    """Draw ``folder``'s run into PNGs and one self-contained ``report.html`` (images embedded, links relative)."""
    folder = Path(folder)
    meta = json.loads((folder / "model.json").read_text())
    evaluation = _read_json(folder / "test_evaluation.json")
    curves = learning_curves(read_records(folder / "metrics.jsonl"))
    summary, top = load_data_summary(folder), load_top_losses(folder)
    metrics = meta.get("metrics", {})
    sections = [("Summary", table([{"route": meta["route"], "backbone": meta["backbone"],
                                    **{k: formatted(k, v) for k, v in metrics.items()}}], id="summary")),
                ("Recipe", "<ul id='recipe'>" + "".join(f"<li>{html.escape(line)}</li>" for line in recipe_lines(meta.get("recipe", {})))
                 + "</ul><p>recipe.yaml holds every key.</p>")]
    if meta.get("auto"):
        sections.append(("Route auto: how this model was chosen", _auto_section(meta["auto"])))
    warnings = meta.get("info", {}).get("warnings", [])
    if warnings:
        sections.append(("Warnings", "<ul id='warnings'>" + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul>"))
    if summary is not None:
        sections.append(("Data", _data_section(summary)))
    elif meta.get("skipped_files"):
        sections.append(("Skipped files", table(meta["skipped_files"], id="skipped")))
    if meta.get("files_outside_data_folder"):
        sections.append(("Files outside the CSV's folder", table([{"file": f} for f in meta["files_outside_data_folder"]], id="outside")))
    if curves.epochs:
        kept = (f"the model of epoch {curves.kept}{' (the starting model)' if curves.kept == 0 else ''} is kept"
                + (" (best validation accuracy, ties to the lower loss)" if curves.validated else " (the last epoch; no validation set)"))
        sections.append(("Learning curves", f"<p id='kept'>{html.escape(kept)}; epoch 0 is the starting model.</p>"
                                            + embed_image(save_figure(curves_figure(curves).axes[0], folder / "curves.png"))))
    if evaluation is not None and "confusion" in evaluation:
        classes = evaluation["classes"]
        sections.append(("Per-class test accuracy", table([{"class": c, "accuracy": percent(a)} for c, a in evaluation["per_class_accuracy"].items()],
                                                          id="per-class")))
        confusion = np.asarray(evaluation["confusion"])
        sections.append(("Most confused (true → predicted)", _confused_section(most_confused(confusion, classes))
                         + embed_image(save_figure(plot_confusion(confusion, classes), folder / "confusion.png"))))
    elif evaluation is not None and "per_class_ap" in evaluation:
        sections.append((f"Per-class test AP (mAP {percent(evaluation.get('mAP', float('nan')))})",
                         table([{"class": c, "AP": percent(a)} for c, a in evaluation["per_class_ap"].items()], id="per-class")))
    if top is not None and len(top):
        gallery = save_figure(plot_top_losses(top, meta["classes"]).axes[0], folder / "top_losses.png")
        sections.append((f"Top losses: the {len(top)} test images the model got most wrong",
                         embed_image(gallery) + _top_losses_section(top, meta["classes"])))
    if (folder / "analysis" / "report.html").exists():
        sections.append(("Analysis", "<p><a id='analysis' href='analysis/report.html'>graft analyze's report</a>: embeddings before "
                                     "and after transfer, the images that drive units, weight change per layer.</p>"))
    else:
        sections.append(("Analysis", "<p><code>graft analyze RUN</code> adds embeddings, unit images and weight change; this page links to it then.</p>"))
    return write_html(folder / "report.html", f"graft run: {meta['route']} on {meta['backbone']}", sections)


def plot_run(folder: Path, kind: str = "curves") -> Figure:
    """One of the report's pictures of the run in ``folder`` as a new Figure: curves | confusion | per_class | top_losses."""
    folder = Path(folder)
    if kind not in PLOT_KINDS:
        raise GraftError(f"run.plot(kind={kind!r}): unknown kind; choose one of {', '.join(PLOT_KINDS)}")
    meta = json.loads((folder / "model.json").read_text())
    evaluation = _read_json(folder / "test_evaluation.json") or {}
    if kind == "curves":
        curves = learning_curves(read_records(folder / "metrics.jsonl"))
        if not curves.epochs:
            raise GraftError(f"{folder}: route {meta['route']} trained no epochs, so it has no learning curves")
        return curves_figure(curves)
    if kind == "top_losses":
        top = load_top_losses(folder)
        if top is None:
            raise GraftError(f"{folder}: no top_losses.npz (the run had no single-label test set); evaluate it with `graft evaluate`")
        return plot_top_losses(top, meta["classes"])
    if "confusion" not in evaluation:
        raise GraftError(f"{folder}: no single-label test evaluation (test_evaluation.json), so no {kind} plot")
    if kind == "confusion":
        return plot_confusion(np.asarray(evaluation["confusion"]), evaluation["classes"]).figure
    return plot_per_class(evaluation["per_class_accuracy"]).figure


class RunReport:
    """A run's report.html for a notebook: a Jupyter cell showing this object shows the page (in an iframe, so the
    page's style stays inside it); ``path`` is the file, ``html`` its text."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.html = self.path.read_text()

    def _repr_html_(self) -> str:
        return (f'<iframe srcdoc="{html.escape(self.html, quote=True)}" title="{html.escape(str(self.path))}" '
                'style="width:100%;height:640px;border:1px solid #ccc"></iframe>')

    def __repr__(self) -> str:
        return f"RunReport({str(self.path)!r})"


__all__ = ["PLOT_KINDS", "RunReport", "curves_figure", "duration", "formatted", "percent", "plot_learning_curves", "plot_run", "plot_top_losses",
           "recipe_lines", "write_run_report"]
