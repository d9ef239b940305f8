"""``graft demo``: the whole story on scikit-learn's bundled digits (real scanned 8x8 digits).

1. Source task: train graft's small ConvNet on digits 0-4 (all their images).
2. Target task: digits 5-9 with only 5 labelled images per class; the rest is the test set.
3. Transfer the source network by ``linear``, ``finetune`` and ``lpft``; train ``scratch`` as the baseline.
4. Print a leaderboard and write a report.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from graft.console import Reporter
from graft.data.split import per_class_subset
from graft.report import table, write_html
from graft.routes import get_route

LABELS_PER_CLASS = 5
# the demo's epochs are sized for its tiny sets and its two-minute budget: no stretching to train.min_steps
COMMON = ["data.image_size=16", "data.batch_size=10", "train.augment.preset=digits", "model.channels_last=false", "train.min_steps=0"]


def digits_tasks(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Write source (0-4), target-train (5 per class of 5-9) and target-test (the rest of 5-9) as .npz files."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    folder.mkdir(parents=True, exist_ok=True)
    source = labels < 5
    np.savez(folder / "source.npz", images=images[source], labels=labels[source], classes=np.array([str(i) for i in range(5)]))
    target_images, target_labels = images[~source], labels[~source] - 5
    chosen = per_class_subset(target_labels, LABELS_PER_CLASS, seed)
    rest = np.setdiff1d(np.arange(len(target_labels)), chosen)
    classes = np.array([str(i) for i in range(5, 10)])
    np.savez(folder / "target_train.npz", images=target_images[chosen], labels=target_labels[chosen], classes=classes)
    np.savez(folder / "target_test.npz", images=target_images[rest], labels=target_labels[rest], classes=classes)
    return {name: folder / f"{name}.npz" for name in ("source", "target_train", "target_test")}


def demo(out: Optional[str | Path] = None, quiet: bool = False, seed: int = 0) -> list[dict[str, Any]]:
    """Run the demo; returns the leaderboard rows (route, test accuracy, seconds)."""
    from graft.fitting import fit

    reporter = Reporter(quiet=quiet)
    root = Path(out) if out else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    files = digits_tasks(root / "data", seed)
    seeded = [f"runtime.seed={seed}"]
    reporter.print("[bold]1. source task[/]: graft_convnet_s on digits 0-4")
    source = fit(files["source"], route="scratch", backbone="graft_convnet_s", out=root / "source", quiet=True,
                 overrides=[*COMMON, *seeded, "train.stages=all:12", "data.batch_size=32"])
    reporter.print(f"   source test accuracy {source.metrics['test_accuracy']:.3f} ({source.metrics['seconds']:.0f} s)")
    reporter.print(f"[bold]2. target task[/]: digits 5-9 with {LABELS_PER_CLASS} labels per class; routes scratch, linear, finetune, lpft")
    target = ["data.val_fraction=0", "data.test_fraction=0", *COMMON, *seeded]
    plans = {
        "scratch": ["train.stages=all:40"],
        "linear": [],
        "finetune": ["train.stages=new:10,all:30", "train.lr=3e-3"],
        "lpft": ["train.stages=all:30", "train.lr=3e-3"],
    }
    rows = []
    for route, extra in plans.items():
        run = fit(files["target_train"], route=route, backbone="graft_convnet_s", weights=str(source.path) if get_route(route).pretrained else None,
                  test=files["target_test"], out=root / route, quiet=True, overrides=[*target, *extra])
        rows.append({"route": route, "test_accuracy": run.metrics["test_accuracy"], "seconds": run.metrics["seconds"], "run": str(run.path)})
        reporter.print(f"   {route:9s} test accuracy {run.metrics['test_accuracy']:.3f}  ({run.metrics['seconds']:.1f} s)")
    rows.sort(key=lambda r: -r["test_accuracy"])
    _print_leaderboard(rows, reporter)
    write_html(root / "report.html", "graft demo: digits 0-4 -> 5-9, 5 labels per class",
               [("Leaderboard (target test accuracy)", table(rows)),
                ("Source task", table([{"run": str(source.path), **source.metrics}]))])
    reporter.print(f"report: {root / 'report.html'}")
    return rows


def _print_leaderboard(rows: list[dict[str, Any]], reporter: Reporter) -> None:
    from rich.table import Table

    board = Table(title="leaderboard: digits 5-9, 5 labels per class")
    for column in ("route", "test accuracy", "seconds"):
        board.add_column(column, justify="left" if column == "route" else "right")
    for row in rows:
        board.add_row(row["route"], f"{row['test_accuracy']:.3f}", f"{row['seconds']:.1f}")
    reporter.console.print(board)
