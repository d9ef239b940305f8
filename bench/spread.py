"""Unlabelled images on cached features: route ``spread`` against the linear probe on the labels alone (CIFAR-10).

CIFAR-10 with 10 and 100 labels per class (seeded subsets of the training split); the unlabelled pool is every
training image outside the labelled subsets of all the task's seeds (49,700 at 10 labels/class, 47,061 at 100 with
seeds 0-2: one pool per task, so its features are extracted once; the labels are read only by ``--audit``, for
the pseudo-labels' accuracy);
the full 10,000-image test split; the shared ImageNet MobileNetV2 at 96 px (``--image-size``: another input size, kept
as rows of their own); graft's defaults otherwise.
Rows: ``linear`` (labels only) and ``spread`` (labels + pool); with ``--rows lpft+spread``, also ``lpft`` on the labels
and ``spread`` on the backbone that ``lpft`` fine-tuned (``--weights`` that run: the pool's features are extracted
from it; seconds: both fits). Mean ± std over seeds, seconds per run.

    python bench/spread.py                       # both tasks, seeds 0 1 2
    python bench/spread.py --tasks cifar10-10 --seeds 0
    python bench/spread.py --image-size 160      # larger input: better frozen features, 2.8x the extraction time
    python bench/spread.py --tasks cifar10-100 --rows lpft+spread   # fine-tune on the labels, then spread
    python bench/spread.py --table
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import MOBILENET, SHARED, add_result_options, add_row, mean_std, printed_table, require_shared, subset_npz

ROWS = {"linear": "linear probe, labels only", "spread": "spread, labels + pool", "lpft": "lpft, labels only",
        "lpft+spread": "spread on lpft's backbone, labels + pool"}
DEFAULT_ROWS = ["linear", "spread"]
TASKS = ["cifar10-10", "cifar10-100"]
GOALS = {"cifar10-10": 0.65, "cifar10-100": 0.72}  # issue 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, choices=[r for r in ROWS if r != "lpft"])
    parser.add_argument("--image-size", type=int, default=96)
    add_result_options(parser, "spread")
    args = parser.parse_args()
    if printed_table(args, print_table):
        return
    require_shared()
    import graft

    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"runs": []}
    done = {(r["task"], r["row"], r["seed"], size_of(r)) for r in results["runs"]}
    work = Path(tempfile.gettempdir()) / "graft-spread"
    work.mkdir(exist_ok=True)
    os.environ.setdefault("GRAFT_CACHE", str(work / "cache"))  # the test split's features are extracted once
    test = str(SHARED / "datasets" / "cifar10_test.npz")
    for task in args.tasks:
        per_class = int(task.split("-")[1])
        for seed in args.seeds:
            train = str(subset_npz(SHARED / "datasets" / "cifar10_train.npz", per_class, seed, work))
            pool = shared_pool(per_class, args.seeds, work)
            for row in args.rows:
                if (task, row, seed, args.image_size) in done:
                    continue
                overrides = ["data.test_fraction=0", f"runtime.seed={seed}", f"data.image_size={args.image_size}"]
                if row.endswith("spread"):
                    overrides += [f"data.unlabeled={pool}", "pseudo.audit=true"]
                started = time.time()
                weights = str(MOBILENET)
                if row == "lpft+spread":  # fine-tune on the labels first; spread then reads the pool through that backbone
                    tuned = work / f"{task}-lpft-s{seed}"
                    shutil.rmtree(tuned, ignore_errors=True)
                    lpft = graft.fit(train, route="lpft", backbone="mobilenetv2_100", weights=weights, test=test, out=tuned, quiet=True,
                                     overrides=overrides[:3])
                    results = add_row(out, row_of(task, "lpft", seed, lpft, started, args.image_size))
                    weights = str(tuned)
                folder = work / f"{task}-{row}-s{seed}"
                shutil.rmtree(folder, ignore_errors=True)
                run = graft.fit(train, route=row.split("+")[-1], backbone="mobilenetv2_100", weights=weights, test=test, out=folder,
                                quiet=True, overrides=overrides)
                info = run.meta["info"]
                entry = row_of(task, row, seed, run, started, args.image_size)
                if row.endswith("spread"):
                    entry.update({key: info.get(key) for key in ("pool", "k", "alpha", "probe_c", "pseudo_label_accuracy", "spread_scores")})
                results = add_row(out, entry)
                print({k: v for k, v in entry.items() if k != "spread_scores"}, flush=True)
                shutil.rmtree(folder, ignore_errors=True)  # the numbers are in the JSON; the runs are 5 MB each
                shutil.rmtree(work / f"{task}-lpft-s{seed}", ignore_errors=True)
    print_table(results)


def shared_pool(per_class: int, seeds: list[int], folder: Path) -> Path:
    """The CIFAR-10 training images outside the ``per_class`` labelled subsets of every seed, hidden labels kept."""
    from graft.data.split import per_class_subset

    out = folder / f"pool_{per_class}pc_outside_s{'-'.join(map(str, sorted(seeds)))}.npz"
    if not out.exists():
        data = np.load(SHARED / "datasets" / "cifar10_train.npz")
        labelled = np.concatenate([per_class_subset(data["labels"], per_class, seed) for seed in seeds])
        rest = np.setdiff1d(np.arange(len(data["labels"])), labelled)
        np.savez(out, images=data["images"][rest], labels=data["labels"][rest], classes=data["classes"])
    return out


def row_of(task: str, row: str, seed: int, run: Any, started: float, size: int) -> dict[str, Any]:
    """A results row of ``run``, its seconds counted from ``started``."""
    return {"task": task, "row": row, "seed": seed, "test_accuracy": run.metrics["test_accuracy"],
            "val_accuracy": run.metrics.get("val_accuracy"), "seconds": round(time.time() - started, 1), "image_size": size,
            "threads": int(os.environ.get("GRAFT_THREADS", 0)) or None}


def size_of(row: dict) -> int:
    """A row's input size (rows from before sizes were recorded are 96 px)."""
    return int(row.get("image_size") or 96)


def print_table(results: dict) -> None:
    rows = results["runs"]
    print("| task | input | " + " | ".join(ROWS.values()) + " | gain over the probe | gain over lpft | goal | pool labelled right | seeds |\n|---|---|"
          + "---|" * (len(ROWS) + 5))
    for task, size in sorted({(r["task"], size_of(r)) for r in rows}, key=lambda pair: (TASKS.index(pair[0]), pair[1])):
        picked = {row: sorted((r for r in rows if r["task"] == task and r["row"] == row and size_of(r) == size), key=lambda r: r["seed"])
                  for row in ROWS}
        cells = [f"{mean_std([r['test_accuracy'] for r in picked[row]])} ({sum(r['seconds'] for r in picked[row]) / max(len(picked[row]), 1):.0f} s)"
                 if picked[row] else "-" for row in ROWS]
        def gain(row: str, base: str) -> str:
            paired = {r["seed"]: r["test_accuracy"] for r in picked[base]}
            return ", ".join(f"{100 * (r['test_accuracy'] - paired[r['seed']]):+.1f}" for r in picked[row] if r["seed"] in paired) or "-"
        right = " / ".join(mean_std([r["pseudo_label_accuracy"] for r in picked[row] if r.get("pseudo_label_accuracy") is not None])
                           for row in ("spread", "lpft+spread") if picked[row])
        seeds = sorted({r["seed"] for row in ROWS for r in picked[row]})
        print(f"| {task} | {size} px | {' | '.join(cells)} | {gain('spread', 'linear')} | {gain('lpft+spread', 'lpft')} | ≥ {100 * GOALS[task]:.0f} | {right} | {','.join(map(str, seeds))} |")


if __name__ == "__main__":
    main()
