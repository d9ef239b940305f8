"""Accuracy and time of scratch / linear / finetune / lpft on real data with the ImageNet MobileNetV2.

CIFAR-10 with 10, 100 and 1000 labels per class (the full 10,000-image test split) and
PneumoniaMNIST (all labels, official val and test splits); mean ± std over seeds; plus the
speed ratio of a second ``linear`` run (cached features) to the first.

    python bench/transfer_basics.py                        # everything (hours on 2 CPU cores)
    python bench/transfer_basics.py --tasks cifar10-100 pneumonia --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import MOBILENET, SHARED, add_result_options, add_row, current, head_init_of, mean_std, min_steps_of, printed_table, require_shared, save, subset_npz

ROUTES = ["scratch", "linear", "finetune", "lpft"]
TASKS = ["cifar10-10", "cifar10-100", "cifar10-1000", "pneumonia"]


def task_data(task: str, seed: int, folder: Path) -> dict[str, str]:
    if task.startswith("cifar10-"):
        per_class = int(task.split("-")[1])
        train = subset_npz(SHARED / "datasets" / "cifar10_train.npz", per_class, seed, folder)
        return {"data": str(train), "test": str(SHARED / "datasets" / "cifar10_test.npz")}
    return {"data": str(SHARED / "datasets" / "pneumoniamnist_train.npz"), "val": str(SHARED / "datasets" / "pneumoniamnist_val.npz"),
            "test": str(SHARED / "datasets" / "pneumoniamnist_test.npz")}


def stages_for(task: str, args: argparse.Namespace) -> str:
    return args.stages_large if task in ("cifar10-1000", "pneumonia") else args.stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    parser.add_argument("--routes", nargs="+", default=ROUTES, choices=ROUTES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--stages", default="new:1,all:9", help="stages for the small tasks (graft's default)")
    parser.add_argument("--stages-large", default="new:1,all:4", help="stages for cifar10-1000 and pneumonia (fewer epochs: CPU time)")
    add_result_options(parser, "transfer_basics")
    parser.add_argument("--cache-check", action="store_true", help="time the cached second linear run again (done once by default)")
    args = parser.parse_args()
    if printed_table(args, print_table):
        return
    require_shared()
    import graft

    out = Path(args.out)
    # a later invocation adds to the saved results instead of replacing them; finished runs are skipped
    results = json.loads(out.read_text()) if out.exists() else {"runs": [], "cache": {}}
    done = {(r["task"], r["route"], r["seed"]) for r in results["runs"] if current(r)}
    work = Path(tempfile.mkdtemp(prefix="graft-bench-"))
    os.environ.setdefault("GRAFT_CACHE", str(work / "cache"))
    for task in args.tasks:
        for seed in args.seeds:
            files = task_data(task, seed, work)
            for route in args.routes:
                if (task, route, seed) in done:
                    continue
                started = time.time()
                run = graft.fit(files["data"], route=route, backbone="mobilenetv2_100", weights=str(MOBILENET), val=files.get("val"),
                                test=files["test"], out=work / f"{task}-{route}-s{seed}", quiet=True,
                                overrides=[f"data.image_size={args.image_size}", "data.test_fraction=0", f"runtime.seed={seed}",
                                           f"train.stages={stages_for(task, args)}"])
                row = {"task": task, "route": route, "seed": seed, "test_accuracy": run.metrics["test_accuracy"],
                       "seconds": round(time.time() - started, 1), "stages": stages_for(task, args) if route != "linear" else "-",
                       "min_steps": min_steps_of(route), "head_init": head_init_of(route)}
                results = add_row(out, row, current, config=vars(args))
                print(row, flush=True)
                shutil.rmtree(run.path, ignore_errors=True)
    if results.get("cache") and not args.cache_check:
        shutil.rmtree(work, ignore_errors=True)
        print_table(results)
        return
    # cached-feature speed: the same linear run twice, timed in this process
    files = task_data("cifar10-100", 0, work)
    os.environ["GRAFT_CACHE"] = str(work / "fresh-cache")
    times = []
    for attempt in range(2):
        started = time.time()
        graft.fit(files["data"], route="linear", backbone="mobilenetv2_100", weights=str(MOBILENET), test=files["test"],
                  out=work / f"cache-{attempt}", quiet=True, overrides=[f"data.image_size={args.image_size}", "data.test_fraction=0"])
        times.append(time.time() - started)
    cache = {"first_seconds": round(times[0], 2), "second_seconds": round(times[1], 2), "ratio": round(times[1] / times[0], 3)}
    results = json.loads(out.read_text())
    results["cache"] = cache
    save(out, results)
    print_table(results)
    shutil.rmtree(work, ignore_errors=True)


def print_table(results: dict) -> None:
    rows = [r for r in results["runs"] if current(r)]
    print("test accuracy %: mean ± std (seeds; seconds per run)\n")
    print(f"| task | {' | '.join(ROUTES)} | seeds |\n|---|" + "---|" * (len(ROUTES) + 1))
    for task in [t for t in TASKS if any(r["task"] == t for r in rows)]:
        cells = []
        for route in ROUTES:
            picked = [r for r in rows if r["task"] == task and r["route"] == route]
            seconds = sum(r["seconds"] for r in picked) / max(len(picked), 1)
            cells.append(f"{mean_std([r['test_accuracy'] for r in picked])} ({len(picked)}; {seconds:.0f} s)" if picked else "-")
        seeds = sorted({r["seed"] for r in rows if r["task"] == task})
        print(f"| {task} | {' | '.join(cells)} | {','.join(map(str, seeds))} |")
    if results.get("cache"):
        c = results["cache"]
        print(f"\nsecond linear run / first: {c['second_seconds']} s / {c['first_seconds']} s = {c['ratio']}")


if __name__ == "__main__":
    main()
