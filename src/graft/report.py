"""Pictures and one self-contained HTML page per run (images embedded, opens from disk).

Computation lives elsewhere; ``plot_*`` functions draw given data on an optional axis. Figures are
:class:`matplotlib.figure.Figure` objects drawn without pyplot, so graft never touches pyplot's global state:
``import graft`` and writing a report leave a notebook's backend and its open figures as they were.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def new_axes(width: float, height: float) -> Axes:
    """One axis on a new figure that belongs to no pyplot window (drawn to PNG by :func:`save_figure`)."""
    return Figure(figsize=(width, height)).add_subplot()


def plot_confusion(confusion: np.ndarray, classes: Sequence[str], ax: Optional[Axes] = None) -> Axes:
    """Row-normalised confusion matrix with counts."""
    ax = ax or new_axes(1 + 0.5 * len(classes), 1 + 0.45 * len(classes))
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    # class names are text, not TeX: a name like '$\frac$' would make matplotlib's mathtext fail at the run's last step
    ax.set_xticks(range(len(classes)), classes, rotation=90, parse_math=False)
    ax.set_yticks(range(len(classes)), classes, parse_math=False)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 20:
        for (i, j), count in np.ndenumerate(confusion):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color="white" if rates[i, j] > 0.5 else "black")
    return ax


def plot_curves(history: Sequence[dict[str, Any]], ax: Optional[Axes] = None, label: str = "") -> Axes:
    """Training and validation accuracy per epoch (epochs counted across stages)."""
    ax = ax or new_axes(6, 3.5)
    epochs = range(1, len(history) + 1)
    ax.plot(epochs, [h["train_accuracy"] for h in history], label=f"{label} train".strip())
    if history and "val_accuracy" in history[0]:
        ax.plot(epochs, [h["val_accuracy"] for h in history], label=f"{label} validation".strip())
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.legend()
    return ax


def plot_embedding(points: np.ndarray, labels: np.ndarray, classes: Sequence[str], ax: Optional[Axes] = None,
                   title: str = "") -> Axes:
    """(N, 2) embedded points coloured by class (``labels`` (N,) index ``classes``)."""
    ax = ax or new_axes(5, 4.5)
    colours = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for index, name in enumerate(classes):
        chosen = labels == index
        if chosen.any():
            ax.scatter(points[chosen, 0], points[chosen, 1], s=6, color=colours(index % colours.N), label=name)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    if len(classes) <= 20:
        for text in ax.legend(fontsize=7, markerscale=2, loc="best").get_texts():
            text.set_parse_math(False)  # class names are text, not TeX
    return ax


def plot_weight_change(names: Sequence[str], relative: Sequence[float], ax: Optional[Axes] = None) -> Axes:
    """Bar chart of per-layer relative weight change ||W - W0|| / ||W0||, input layer at the left."""
    ax = ax or new_axes(max(6.0, 0.16 * len(names)), 4)
    values = np.nan_to_num(np.asarray(relative, float))
    ax.bar(range(len(values)), values, color="tab:blue")
    ax.set_xticks(range(len(names)), [n.removesuffix(".weight") for n in names], rotation=90, fontsize=6)
    ax.set_ylabel("||W - W0|| / ||W0||")
    ax.set_title("relative weight change per layer")
    return ax


def plot_image_grid(rows: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str], ax: Optional[Axes] = None,
                    title: str = "", size: int = 48) -> Axes:
    """A mosaic: one row per entry of ``rows`` (each a list of (H, W, 3) uint8 images, resized to ``size``)."""
    from PIL import Image

    columns = max((len(r) for r in rows), default=1)
    ax = ax or new_axes(1 + 0.6 * columns, 0.4 + 0.6 * max(len(rows), 1))
    mosaic = np.full((max(len(rows), 1) * (size + 2), columns * (size + 2), 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            tile = np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize((size, size), Image.BILINEAR))
            mosaic[i * (size + 2): i * (size + 2) + size, j * (size + 2): j * (size + 2) + size] = tile
    ax.imshow(mosaic)
    ax.set_yticks([i * (size + 2) + size / 2 for i in range(len(rows))], list(row_labels), fontsize=7)
    ax.set_xticks([])
    ax.set_title(title, fontsize=9)
    return ax


def plot_per_class(per_class: dict[str, float], ax: Optional[Axes] = None) -> Axes:
    """Horizontal bars of per-class accuracy."""
    ax = ax or new_axes(5, 1 + 0.3 * len(per_class))
    names = list(per_class)
    ax.barh(range(len(names)), [per_class[n] for n in names], color="tab:green")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    return ax


def plot_route_curves(histories: dict[str, Sequence[dict[str, Any]]], ax: Optional[Axes] = None) -> Axes:
    """Validation (else training) accuracy per epoch of several runs on one chart, one line per name."""
    ax = ax or new_axes(7, 4)
    for name, history in histories.items():
        key = "val_accuracy" if history and "val_accuracy" in history[0] else "train_accuracy"
        if history:
            ax.plot(range(1, len(history) + 1), [h[key] for h in history], marker="o", markersize=3,
                    label=f"{name} ({'validation' if key == 'val_accuracy' else 'train'})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    if histories:
        ax.legend(fontsize=7)
    return ax


def save_figure(ax: Axes, path: Path) -> Path:
    figure = ax.figure
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def embed_image(path: Path) -> str:
    """An <img> holding the PNG at ``path`` as a data URI (the page opens from anywhere without its PNGs)."""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def table(rows: Sequence[dict[str, Any]], caption: str = "", id: str = "") -> str:
    """An HTML table from a list of dicts (keys of the first row are the columns); ``id`` names it in the page."""
    if not rows:
        return ""
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    ident = f' id="{html.escape(id)}"' if id else ""
    return f"<table{ident}>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value != value:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_html(path: Path, title: str, sections: Sequence[tuple[str, str]], images: Sequence[Path] = ()) -> Path:
    """One page: ``sections`` are (heading, HTML body); ``images`` PNGs embedded as data URIs."""
    parts = [f"<h2>{html.escape(h)}</h2>{body}" for h, body in sections]
    parts += [f"<figure>{embed_image(p)}<figcaption>{html.escape(p.name)}</figcaption></figure>" for p in images]
    style = ("body{font-family:sans-serif;max-width:980px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}")
    path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>")
    return path


def write_analysis_report(analysis: Any, folder: Path, title: str) -> Path:
    """Draw a :class:`graft.analysis.Analysis` into PNGs in ``folder`` and one self-contained ``report.html``."""
    folder.mkdir(parents=True, exist_ok=True)
    images: list[Path] = []
    sections: list[tuple[str, str]] = [("Notes", "".join(f"<p>{html.escape(n)}</p>" for n in analysis.notes))]
    panels = [("after", analysis.after_embedding)] + ([("before", analysis.before_embedding)] if analysis.before_embedding is not None else [])
    axes = Figure(figsize=(5 * len(panels), 4.6)).subplots(1, len(panels), squeeze=False)
    for ax, (name, points) in zip(axes[0], reversed(panels)):
        plot_embedding(points, analysis.labels, analysis.classes, ax=ax, title=f"{analysis.embedding_method}: features {name} transfer")
    images.append(save_figure(axes[0][0], folder / "embedding.png"))
    grids = [("after", analysis.top_after)] + ([("before", analysis.top_before)] if analysis.top_before is not None else [])
    axes = Figure(figsize=(1.5 + 0.6 * analysis.top_after.shape[1], 0.8 + 0.7 * len(analysis.units) * len(grids))).subplots(
        len(grids), 1, squeeze=False)
    for ax, (name, indices) in zip(axes[:, 0], reversed(grids)):
        rows = [[analysis.images.image(int(i)) for i in row] for row in indices]
        plot_image_grid(rows, [f"unit {u}" for u in analysis.units], ax=ax,
                        title=f"top-{indices.shape[1]} images per unit {name} transfer ({analysis.unit_choice} units)")
    images.append(save_figure(axes[0][0], folder / "top_units.png"))
    if analysis.changes:
        images.append(save_figure(plot_weight_change([c.name for c in analysis.changes], [c.relative for c in analysis.changes]),
                                  folder / "weight_change.png"))
        finite = [c.relative for c in analysis.changes if c.relative == c.relative]
        sections.append(("Relative weight change ||W-W0||/||W0||", table([
            {"layers": len(analysis.changes), "median": float(np.median(finite)) if finite else float("nan"),
             "max": max(finite, default=float("nan")), "first layer": finite[0] if finite else float("nan"),
             "last layer": finite[-1] if finite else float("nan"),
             "new or grown": sum(c.status != "changed" for c in analysis.changes)}])))
    if analysis.evaluation is not None:
        evaluation = analysis.evaluation
        sections.append((f"Accuracy {evaluation.accuracy:.4f} on {evaluation.count} images",
                         table([{"class": c, "accuracy": a} for c, a in evaluation.per_class.items()])))
        images.append(save_figure(plot_confusion(evaluation.confusion, evaluation.classes), folder / "confusion.png"))
        images.append(save_figure(plot_per_class(evaluation.per_class), folder / "per_class.png"))
    if analysis.history:
        images.append(save_figure(plot_curves(analysis.history), folder / "curves.png"))
    return write_html(folder / "report.html", title, sections, images)
