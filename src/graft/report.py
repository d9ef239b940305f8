"""Pictures and one self-contained HTML page per run (images embedded, opens from disk).

Computation lives elsewhere; ``plot_*`` functions draw given data on an optional axis.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_confusion(confusion: np.ndarray, classes: Sequence[str], ax: Optional[plt.Axes] = None) -> plt.Axes:
    """Row-normalised confusion matrix with counts."""
    ax = ax or plt.figure(figsize=(1 + 0.5 * len(classes), 1 + 0.45 * len(classes))).gca()
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 20:
        for (i, j), count in np.ndenumerate(confusion):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color="white" if rates[i, j] > 0.5 else "black")
    return ax


def plot_curves(history: Sequence[dict[str, Any]], ax: Optional[plt.Axes] = None, label: str = "") -> plt.Axes:
    """Training and validation accuracy per epoch (epochs counted across stages)."""
    ax = ax or plt.figure(figsize=(6, 3.5)).gca()
    epochs = range(1, len(history) + 1)
    ax.plot(epochs, [h["train_accuracy"] for h in history], label=f"{label} train".strip())
    if history and "val_accuracy" in history[0]:
        ax.plot(epochs, [h["val_accuracy"] for h in history], label=f"{label} validation".strip())
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.legend()
    return ax


def save_figure(ax: plt.Axes, path: Path) -> Path:
    figure = ax.figure
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _embed(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def table(rows: Sequence[dict[str, Any]], caption: str = "") -> str:
    """An HTML table from a list of dicts (keys of the first row are the columns)."""
    if not rows:
        return ""
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_html(path: Path, title: str, sections: Sequence[tuple[str, str]], images: Sequence[Path] = ()) -> Path:
    """One page: ``sections`` are (heading, HTML body); ``images`` PNGs embedded as data URIs."""
    parts = [f"<h2>{html.escape(h)}</h2>{body}" for h, body in sections]
    parts += [f"<figure>{_embed(p)}<figcaption>{html.escape(p.name)}</figcaption></figure>" for p in images]
    style = ("body{font-family:sans-serif;max-width:980px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}")
    path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>")
    return path
