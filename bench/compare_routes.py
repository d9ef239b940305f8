"""`graft compare` and `graft advise` on real data with the ImageNet MobileNetV2 (input 96 px).

Tasks: PneumoniaMNIST (all labels, official val and test splits: the different-domain target) and
CIFAR-10 with 100 labels per class (validation split off those 1,000; tested on a seeded 2,000-image
class-balanced subset of the official test split, 200 per class, to save CPU time). Each comparison
runs under a time budget (18 min Pneumonia, 20 min CIFAR; fewer epochs than graft's default, see TASKS)
with up to 3 seeds, cheapest route first; `graft advise` runs on the same training data and its top recommendation is checked against the
leaderboard's winner.

    python bench/compare_routes.py                       # both tasks (about 40 min on one CPU thread)
    python bench/compare_routes.py --tasks pneumonia --advise-only
    python bench/compare_routes.py --table               # the docs table (docs/results/compare.md) from bench/results/compare_routes.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import EPOCHS_AS_GIVEN, MOBILENET, SHARED, require_shared, save, subset_npz

# (budget, stages): fewer epochs than graft's default (new:1,all:9) so that every route and some seeds fit the
# budget on one shared CPU thread: Pneumonia has 4,708 training images (2 epochs), CIFAR-10 850 (6 epochs)
TASKS = {"pneumonia": ("18m", "new:1,all:1"), "cifar10-100": ("20m", "new:1,all:5")}
RESULTS = Path(__file__).parent / "results" / "compare_routes.json"


def task_data(task: str, folder: Path) -> dict[str, str]:
    datasets = SHARED / "datasets"
    if task == "pneumonia":
        return {"data": str(datasets / "pneumoniamnist_train.npz"), "val": str(datasets / "pneumoniamnist_val.npz"),
                "test": str(datasets / "pneumoniamnist_test.npz")}
    return {"data": str(subset_npz(datasets / "cifar10_train.npz", 100, 0, folder)),
            "test": str(subset_npz(datasets / "cifar10_test.npz", 200, 0, folder))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--advise-only", action="store_true", help="only run `graft advise` (compare results already saved)")
    parser.add_argument("--compare-only", action="store_true", help="only run `graft compare`")
    parser.add_argument("--table", action="store_true", help="only print the table of the saved results (the docs page shows it)")
    args = parser.parse_args()
    if args.table:
        print_table(json.loads(RESULTS.read_text()))
        return
    require_shared()
    import graft
    from graft.comparison import print_leaderboard

    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"compare": {}, "advise": {}}
    work = Path(tempfile.mkdtemp(prefix="graft-compare-"))
    os.environ.setdefault("GRAFT_CACHE", str(work / "cache"))
    common = dict(backbone="mobilenetv2_100", weights=str(MOBILENET))
    overrides = [f"data.image_size={args.image_size}", "data.test_fraction=0", EPOCHS_AS_GIVEN]
    for task in args.tasks:
        files = task_data(task, work)
        if task not in results["compare"] and not args.advise_only:
            started = time.time()
            budget, stages = TASKS[task]
            comparison = graft.compare(files["data"], None, val=files.get("val"), test=files["test"], seeds=args.seeds, budget=budget,
                                       out=work / f"compare-{task}", overrides=[*overrides, f"train.stages={stages}"], quiet=False, **common)
            print_leaderboard(comparison)
            results["compare"][task] = {"budget": budget, "stages": stages, "seconds": round(time.time() - started, 1),
                                        "leaderboard": comparison.leaderboard,
                                        "entries": [{k: v for k, v in e.__dict__.items() if k != "history"} for e in comparison.entries]}
            save(RESULTS, results)
        if task not in results["advise"] and not args.compare_only:
            started = time.time()
            advice = graft.advise(files["data"], val=files.get("val"), overrides=overrides, quiet=True, **common)
            results["advise"][task] = {**advice.to_dict(), "seconds": round(time.time() - started, 1)}
            print(json.dumps(results["advise"][task], indent=1), flush=True)
            save(RESULTS, results)
    shutil.rmtree(work, ignore_errors=True)
    print_table(results)


def print_table(results: dict) -> None:
    for task, compared in results["compare"].items():
        print(f"\n**{task}** (budget {compared['budget']}, stages {compared['stages']}, {compared['seconds']:.0f} s in all)\n")
        print("| rank | route | test accuracy % (mean ± std) | seeds | seconds per run | notes |\n|---|---|---|---|---|---|")
        for rank, row in enumerate(compared["leaderboard"], start=1):
            accuracy = "-" if not row["seeds"] else f"{100 * row['accuracy']:.1f}" + (f" ± {100 * row['std']:.1f}" if row["seeds"] > 1 else "")
            seconds = "-" if not row["seeds"] else f"{row['seconds']:.0f}"
            missed = [e for e in compared["entries"] if e["route"] == row["route"] and e["status"] != "done"]
            notes = ", ".join(f"seed {e['seed']} {e['status']}" + (f" after {e['seconds']:.0f} s" if e["status"] == "stopped" else "")
                              for e in missed)
            print(f"| {rank} | {row['route']} | {accuracy} | {row['seeds']} | {seconds} | {notes} |")
        advice = results.get("advise", {}).get(task)
        if advice:
            winner = compared["leaderboard"][0]["route"]
            top = advice["routes"][0]
            print(f"\n`graft advise`: {advice['size']} + {advice['similarity']} -> **{top}** "
                  f"({'the leaderboard winner' if top == winner else f'the leaderboard winner was {winner}'}); "
                  f"{advice['measured']} ({advice['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
