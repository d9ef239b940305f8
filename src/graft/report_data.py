"""What a run report shows, computed from a run's data and files before anything is drawn (DESIGN.md §3: compute,
then plot, then save): images per split and class, the learning curves with the kept epoch, the most-confused class
pairs and the test images with the highest loss (fastai's ``plot_top_losses``, Howard & Gugger 2020, ch. 2).

``save_report_data`` writes what only the finishing run has (its splits, its test logits and images) into the run
directory, so a report and ``Run.plot`` can be drawn again later from the run's files alone.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

if TYPE_CHECKING:
    from graft.data.sources import ImageSet

DATA_FILE = "report_data.json"  # images per split and class, skipped files
TOP_LOSSES_FILE = "top_losses.npz"  # the gallery: thumbnails (uint8) and their numbers; no pickles


@dataclass
class DataSummary:
    """Images per split and class (``counts[split][class]``) and the files that could not be read (file, reason)."""

    counts: dict[str, dict[str, int]]
    skipped: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def of(cls, splits: dict[str, Optional["ImageSet"]]) -> "DataSummary":
        counts = {name: images.class_counts() for name, images in splits.items() if images is not None}
        # a split carved out of the training folder shares its skipped list: each file once, in order
        skipped = dict.fromkeys(entry for images in splits.values() if images is not None for entry in images.skipped)
        return cls(counts, [{"file": file, "reason": reason} for file, reason in skipped])


@dataclass
class LearningCurves:
    """Per-epoch accuracy and loss of the run's training loops (epochs counted across stages and loops; epoch 0 is the
    starting model, e.g. LP-FT's probe, measured on validation only). ``kept`` is the epoch whose weights the run
    returns (its best validation score; the last epoch without validation); None without epochs."""

    epochs: list[int]
    train_accuracy: list[float]
    train_loss: list[float]
    val_accuracy: list[float]  # NaN where not measured (no validation set, or train values at epoch 0)
    val_loss: list[float]
    kept: Optional[int] = None
    stage_starts: list[int] = field(default_factory=list)  # first epoch of each stage after the first

    @property
    def validated(self) -> bool:
        return any(not math.isnan(v) for v in self.val_accuracy)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a run's ``metrics.jsonl`` (none when the file is absent)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def learning_curves(records: list[dict[str, Any]]) -> LearningCurves:
    """Curves from ``metrics.jsonl`` records: "initial" (starting model on validation), "epoch" and "returned" events.

    A run that trains several loops (e.g. pseudo-label rounds) has several "initial"/"returned" pairs; the last "returned"
    names the returned model. Each initial point sits at the epoch count reached before its loop."""
    nan = float("nan")
    curves = LearningCurves([], [], [], [], [])
    initial_at = 0  # the epoch count reached when the latest loop started
    for record in records:
        event = record.get("event")
        if event == "initial":
            initial_at = sum(e > 0 for e in curves.epochs)
            if not curves.epochs:  # only the first loop's starting point gets its own epoch 0
                curves.epochs.append(0)
                curves.train_accuracy.append(nan)
                curves.train_loss.append(nan)
                curves.val_accuracy.append(record.get("val_accuracy", nan))
                curves.val_loss.append(record.get("val_loss", nan))
        elif event == "epoch":
            number = sum(e > 0 for e in curves.epochs) + 1
            if curves.epochs and record.get("epoch") == 1 and record.get("stage", 0) > 0:
                curves.stage_starts.append(number)
            curves.epochs.append(number)
            curves.train_accuracy.append(record.get("train_accuracy", nan))
            curves.train_loss.append(record.get("train_loss", nan))
            curves.val_accuracy.append(record.get("val_accuracy", nan))
            curves.val_loss.append(record.get("val_loss", nan))
        elif event == "returned":
            curves.kept = _kept_epoch(records, record, initial_at)
    if curves.kept is None and any(e > 0 for e in curves.epochs):
        curves.kept = max(curves.epochs)  # no validation: the last epoch's weights are returned
    return curves


def _kept_epoch(records: list[dict[str, Any]], kept: dict[str, Any], initial_at: int) -> int:
    """The global epoch of a "returned" event's (stage, epoch): its loop's start for epoch 0, else the latest epoch
    record before it with that stage and epoch."""
    if kept.get("epoch", 0) == 0:
        return initial_at
    epoch_records = [r for r in records[:records.index(kept)] if r.get("event") == "epoch"]
    for position in range(len(epoch_records) - 1, -1, -1):
        if (epoch_records[position].get("stage"), epoch_records[position].get("epoch")) == (kept.get("stage"), kept.get("epoch")):
            return position + 1
    return len(epoch_records)


@dataclass
class ConfusedPair:
    """``count`` test images of class ``true`` predicted as ``predicted``; ``rate``: their share of class ``true``."""

    true: str
    predicted: str
    count: int
    rate: float


def most_confused(confusion: np.ndarray, classes: list[str], limit: int = 5) -> list[ConfusedPair]:
    """The off-diagonal cells of a (C, C) confusion matrix (rows: true class) with the most images, largest first
    (fastai's ``most_confused``); empty cells are left out."""
    confusion = np.asarray(confusion)
    totals = np.maximum(confusion.sum(1), 1)
    cells = [(int(confusion[i, j]), i, j) for i in range(len(classes)) for j in range(len(classes)) if i != j and confusion[i, j] > 0]
    cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
    return [ConfusedPair(classes[i], classes[j], count, count / float(totals[i])) for count, i, j in cells[:limit]]


@dataclass
class TopLosses:
    """The ``k`` test images with the highest cross-entropy loss, highest first: their index in the test set, true and
    predicted class index, the softmax probability of the prediction and of the true class, the loss, a name (file
    or index) and a thumbnail (k, S, S, 3) uint8."""

    index: np.ndarray
    true: np.ndarray
    predicted: np.ndarray
    probability: np.ndarray
    true_probability: np.ndarray
    loss: np.ndarray
    names: list[str]
    thumbnails: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def save(self, path: Path) -> None:
        np.savez_compressed(path, names=np.array(self.names, dtype=str),
                            **{k: v for k, v in asdict(self).items() if k != "names"})

    @classmethod
    def load(cls, path: Path) -> "TopLosses":
        with np.load(path, allow_pickle=False) as stored:
            return cls(**{k: (stored[k].tolist() if k == "names" else stored[k]) for k in stored.files})


def top_losses(logits: np.ndarray, labels: np.ndarray, images: "ImageSet", k: int = 12, size: int = 96) -> TopLosses:
    """The ``k`` images of ``images`` (labels (N,)) with the highest loss under (N, C) ``logits``."""
    from PIL import Image

    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(1, keepdims=True)
    log_probability = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    labels = np.asarray(labels, np.int64)
    loss = -log_probability[np.arange(len(labels)), labels]
    order = np.argsort(-loss, kind="stable")[:k]
    probability = np.exp(log_probability[order])
    thumbnails = np.zeros((len(order), size, size, 3), np.uint8)
    for row, index in enumerate(order):
        picture = Image.fromarray(np.asarray(images.image(int(index)), np.uint8)).convert("RGB")
        scale = size / max(picture.size)  # the longer side to ``size`` (small images grow), the rest stays white
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), Image.BILINEAR)
        thumbnails[row] = 255
        top, left = (size - picture.height) // 2, (size - picture.width) // 2
        thumbnails[row, top: top + picture.height, left: left + picture.width] = np.asarray(picture)
    names = [Path(str(images.paths[int(i)])).name if images.paths is not None else f"test image {int(i)}" for i in order]
    return TopLosses(order.astype(np.int64), labels[order], probability.argmax(1).astype(np.int64), probability.max(1),
                     probability[np.arange(len(order)), labels[order]], loss[order], names, thumbnails)


def save_report_data(folder: Path, splits: dict[str, Optional["ImageSet"]], test_logits: Optional[np.ndarray] = None) -> None:
    """Write ``report_data.json`` (the data summary) and, for a single-label test set with logits, ``top_losses.npz``."""
    (folder / DATA_FILE).write_text(json.dumps({"data": asdict(DataSummary.of(splits))}, indent=2))
    test = splits.get("test")
    if test is not None and len(test) and test_logits is not None and not test.multilabel:
        top_losses(test_logits, test.labels, test).save(folder / TOP_LOSSES_FILE)


def load_data_summary(folder: Path) -> Optional[DataSummary]:
    path = folder / DATA_FILE
    return DataSummary(**json.loads(path.read_text())["data"]) if path.exists() else None


def load_top_losses(folder: Path) -> Optional[TopLosses]:
    path = folder / TOP_LOSSES_FILE
    return TopLosses.load(path) if path.exists() else None


__all__ = ["ConfusedPair", "DataSummary", "LearningCurves", "TopLosses", "learning_curves", "load_data_summary", "load_top_losses",
           "most_confused", "read_records", "save_report_data", "top_losses"]
