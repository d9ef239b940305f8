"""Route auto against the best single route: test accuracy, the route it chose, and what ensembling did.

Tasks of bench/transfer_basics.py (CIFAR-10 with 100 and 1000 labels/class on the full test split, PneumoniaMNIST
with its official val/test), 3 seeds, 96 px, the shared ImageNet MobileNetV2, the same stages as there. The task's best
single route is the one of best mean test accuracy in bench/results/transfer_basics.json (3 seeds). It is fitted
again here, alone, on every seed this invocation runs, in the conditions of the auto runs (same process, machine load
and threads, a feature cache of its own): its test accuracy is the paired comparison ('alone, same seeds'), and each
run of ``--route auto`` gets a budget of 1.5x its mean time here (stored as ``reference_timing``). The machine's
speed drifts by up to 1.5x between sessions: a time measured in another session made budgets that did not fit the
single route itself (PneumoniaMNIST: finetune took 276 s in one session, 368-381 s in the next). Ensembling is measured on validation (what auto saw) and on test: the test
accuracy of the ensemble tried against that of the best single candidate, both computed here after the run (auto
itself reads the test split once, with its winner).

Threads are part of a run: the same seed trained with 1 and with 2 torch threads adds its floats in another order and
ends in another model (PneumoniaMNIST finetune, seed 0: 92.1 % with 2 threads, 92.5 % with 1; the 91.8 % of the
headline's rows of 2026-12-03, also 1 thread, came from older code and are replaced). The headline table ran with
GRAFT_THREADS=1; rows here record their threads, and a run with GRAFT_THREADS=1 is kept beside the 2-thread ones.

    python bench/auto.py                       # everything (hours on 2 CPU cores)
    python bench/auto.py --tasks pneumonia --seeds 0
    GRAFT_THREADS=1 python bench/auto.py --tasks pneumonia   # the headline's threads
    python bench/auto.py --quick               # minutes: checks the script, numbers mean nothing
    python bench/auto.py --table
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import MOBILENET, SHARED, add_row, current, mean_std, require_shared, save, subset_npz
from transfer_basics import stages_for, task_data

TASKS = ["cifar10-100", "pneumonia", "cifar10-1000"]
RESULTS = Path(__file__).parent / "results"
BUDGET_FACTOR = 1.5


def headline_means(task: str, basics: dict[str, Any]) -> dict[str, float]:
    """Mean test accuracy of every route on ``task`` in transfer_basics' current rows (the headline table)."""
    rows = [r for r in basics["runs"] if r["task"] == task and current(r)]
    return {route: statistics.mean(r["test_accuracy"] for r in rows if r["route"] == route) for route in {r["route"] for r in rows}}


def best_single(task: str, basics: dict[str, Any]) -> dict[str, Any]:
    """The route with the best mean test accuracy on ``task`` in transfer_basics' current rows, its mean and mean seconds."""
    means = headline_means(task, basics)
    if not means:
        raise SystemExit(f"bench/results/transfer_basics.json has no current rows of {task}; run bench/transfer_basics.py first")
    route = max(means, key=means.get)
    seconds = statistics.mean(r["seconds"] for r in basics["runs"] if (r["task"], r["route"]) == (task, route) and current(r))
    return {"route": route, "test_accuracy": means[route], "seconds": seconds}


def timed_reference(task: str, route: str, files: dict[str, str], size: int, stages: str, work: Path, seed: int = 0) -> dict[str, float]:
    """Seconds and test accuracy of one plain ``graft fit --route ROUTE`` with the test split, from a feature cache of its
    own (it pays for its own extraction, as a user's first run does)."""
    import graft

    before = os.environ.get("GRAFT_CACHE")
    os.environ["GRAFT_CACHE"] = str(work / f"reference-cache-{task}")
    try:
        started = time.time()
        run = graft.fit(files["data"], route=route, backbone="mobilenetv2_100", weights=str(MOBILENET), val=files.get("val"),
                        test=files["test"], out=work / f"{task}-{route}-reference-s{seed}", quiet=True,
                        overrides=[f"data.image_size={size}", "data.test_fraction=0", f"runtime.seed={seed}", f"train.stages={stages}"])
        seconds = time.time() - started
    finally:
        os.environ["GRAFT_CACHE"] = before or ""
    shutil.rmtree(run.path, ignore_errors=True)
    shutil.rmtree(work / f"reference-cache-{task}", ignore_errors=True)
    return {"seconds": round(seconds, 1), "test_accuracy": run.metrics["test_accuracy"]}


def threads_of(entry: dict[str, Any]) -> Any:
    """torch threads a row or an 'alone' fit ran with ('-' for rows from before the bench recorded them). The same seed
    run with 1 and with 2 threads sums its floats in another order and trains another model: the headline table
    (bench/transfer_basics.py) ran with GRAFT_THREADS=1, this bench with the default 2 unless GRAFT_THREADS says."""
    return entry.get("threads", "-")


def alone_of(results: dict[str, Any], task: str, seed: int, threads: Any) -> Any:
    """The best single route fitted alone on ``task``, ``seed`` with ``threads`` threads in this bench, or None."""
    return next((a for a in results.get("alone", []) if (a["task"], a["seed"], threads_of(a)) == (task, seed, threads)), None)


def timed_here(row: dict[str, Any]) -> bool:
    """Rows whose budget came from the reference timed by this bench (earlier rows took transfer_basics' seconds,
    measured under other machine load: dropped and redone)."""
    return "seconds_transfer_basics" in row["reference"] or row["task"] == "quick"


def rules(row: dict[str, Any]) -> str:
    """Which auto (and bench) a row came from: extras (an ensemble or flips) on any validation gain, possibly past the
    budget; the same within the budget; on a clear gain only (one-sided McNemar p <= 0.05), within the budget, the budget
    from the single route timed alone on the same seeds in the same invocation."""
    if row.get("budget_from") == "alone":
        return "clear gain, in budget"
    return "any gain, in budget" if "scoring_seconds_per_image" in row else "any gain"


CURRENT = "clear gain, in budget"


def quick_data(seed: int, folder: Path) -> dict[str, str]:
    """A tiny CIFAR-10 task: 10 labels per class, 200 test images."""
    test = folder / "cifar10_test_200.npz"
    if not test.exists():
        data = np.load(SHARED / "datasets" / "cifar10_test.npz")
        np.savez(test, images=data["images"][:200], labels=data["labels"][:200], classes=data["classes"])
    return {"data": str(subset_npz(SHARED / "datasets" / "cifar10_train.npz", 10, seed, folder)), "test": str(test)}


def ensemble_on_test(run: Any, test: str) -> dict[str, Any]:
    """Test accuracy of the best single candidate and of the ensemble auto tried (whether or not it kept it)."""
    import graft
    from graft.data.sources import load_images
    from graft.inference import run_probabilities, run_scores

    auto = run.meta["auto"]
    images = load_images(test, classes=run.classes)
    done = sorted((r for r in auto["leaderboard"] if r["val_accuracy"] is not None), key=lambda r: (-r["val_accuracy"], r["val_log_loss"]))
    probabilities: dict[str, np.ndarray] = {}

    def of(route: str) -> np.ndarray:
        if route not in probabilities:
            member = graft.load_run(run.path / "candidates" / route)
            probabilities[route] = run_probabilities(member, run_scores(member, images, tta="none"))
        return probabilities[route]

    accuracy = lambda p: float((p.argmax(1) == images.labels).mean())  # noqa: E731
    single = accuracy(of(done[0]["route"]))
    tried = auto["ensemble"]
    if not tried.get("tried"):
        return {"best_single_route": done[0]["route"], "best_single_test": single, "ensemble_test": None, "ensemble_gain_test": None}
    weights = tried["weights"]
    mixed = sum(w * of(route) for route, w in weights.items()) / sum(weights.values())
    return {"best_single_route": done[0]["route"], "best_single_test": single, "ensemble_test": accuracy(mixed),
            "ensemble_gain_test": accuracy(mixed) - single}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--stages", default="new:1,all:9", help="stages for cifar10-100 (as transfer_basics)")
    parser.add_argument("--stages-large", default="new:1,all:4", help="stages for cifar10-1000 and pneumonia (as transfer_basics)")
    parser.add_argument("--quick", action="store_true", help="one tiny task (CIFAR-10, 10 labels/class, 32 px, 1 epoch, 200 test images) "
                                                             "into results/auto_quick.json: checks the script, not the method")
    parser.add_argument("--out", help="results file (default results/auto.json, or results/auto_quick.json with --quick)")
    parser.add_argument("--table", action="store_true", help="only print the table of the results saved in --out")
    args = parser.parse_args()
    out = Path(args.out) if args.out else RESULTS / ("auto_quick.json" if args.quick else "auto.json")
    if args.table:
        print_table(json.loads(out.read_text()))
        return
    require_shared()
    import torch

    import graft

    basics = json.loads((RESULTS / "transfer_basics.json").read_text())
    results = json.loads(out.read_text()) if out.exists() else {"runs": []}
    threads = torch.get_num_threads()
    done = {(r["task"], r["seed"]) for r in results["runs"] if timed_here(r) and rules(r) == CURRENT and threads_of(r) == threads}
    work = Path(tempfile.mkdtemp(prefix="graft-bench-auto-"))
    os.environ.setdefault("GRAFT_CACHE", str(work / "cache"))
    tasks = ["quick"] if args.quick else args.tasks
    for task in tasks:
        if args.quick:
            reference = {"route": "-", "test_accuracy": float("nan"), "seconds": 120 / BUDGET_FACTOR}
            size, stages = 32, "new:1,all:1"
        else:
            reference, size, stages = best_single(task, basics), args.image_size, stages_for(task, args)
            seeds = [seed for seed in args.seeds if (task, seed) not in done]
            if not seeds:
                continue
            alone = results.setdefault("alone", [])
            for seed in seeds:  # the best single route alone on every seed, here and now: the pairs and the budget
                alone[:] = [a for a in alone if (a["task"], a["seed"], threads_of(a)) != (task, seed, threads)]
                alone.append({"task": task, "seed": seed, "threads": threads, "route": reference["route"],
                              **timed_reference(task, reference["route"], task_data(task, seed, work), size, stages, work, seed)})
                save(out, results)
                print(f"{task} seed {seed}: {reference['route']} alone {alone[-1]}", flush=True)
            seconds = round(statistics.mean(alone_of(results, task, seed, threads)["seconds"] for seed in seeds), 1)
            results.setdefault("reference_timing", {})[f"{task}, {threads} threads"] = {
                "route": reference["route"], "seconds": seconds, "stages": stages, "image_size": size, "seeds": seeds,
                "threads": threads, "when": time.strftime("%Y-%m-%d %H:%M")}
            save(out, results)
            reference = {**reference, "seconds_transfer_basics": reference["seconds"], "seconds": seconds}
        budget = round(BUDGET_FACTOR * reference["seconds"], 1)
        for seed in args.seeds[:1] if args.quick else args.seeds:
            if (task, seed) in done:
                continue
            files = quick_data(seed, work) if args.quick else task_data(task, seed, work)
            started = time.time()
            run = graft.fit(files["data"], route="auto", backbone="mobilenetv2_100", weights=str(MOBILENET), val=files.get("val"),
                            test=files["test"], out=work / f"{task}-auto-s{seed}", quiet=True, budget=budget,
                            overrides=[f"data.image_size={size}", "data.test_fraction=0", f"runtime.seed={seed}", f"train.stages={stages}"])
            auto = run.meta["auto"]
            row = {"task": task, "seed": seed, "test_accuracy": run.metrics["test_accuracy"], "seconds": round(time.time() - started, 1),
                   "budget_seconds": budget, "threads": threads, "chosen": run.meta["route"], "tta": run.meta["tta"],
                   "members": auto["ensemble"].get("weights") if run.meta["route"] == "ensemble" else None,
                   "ensemble_gain_val": auto["ensemble"].get("gain_val"), "ensemble_used": auto["ensemble"].get("used", False),
                   "candidates": {r["route"]: {"status": r["status"], "val_accuracy": r["val_accuracy"], "seconds": r["seconds"]}
                                  for r in auto["leaderboard"]},
                   "reference": reference, "budget_from": "alone", "stages": stages, "image_size": size, "scoring_seconds_per_image": auto["scoring_seconds_per_image"],
                   **ensemble_on_test(run, files["test"])}
            results = add_row(out, row, lambda r, key=(task, seed, threads): timed_here(r) and (r["task"], r["seed"], threads_of(r)) != key, config={k: v for k, v in vars(args).items() if k not in ("table", "out")})
            print({k: row[k] for k in ("task", "seed", "test_accuracy", "chosen", "ensemble_gain_val", "ensemble_gain_test", "seconds")},
                  flush=True)
            shutil.rmtree(run.path, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    print_table(results)


def print_table(results: dict[str, Any]) -> None:
    rows = results["runs"]
    basics = json.loads((RESULTS / "transfer_basics.json").read_text())
    print("route auto under 1.5x the best single route's mean time: test accuracy %, mean ± std over seeds. 'best single route':\n"
          "the best mean test accuracy of the headline table (bench/transfer_basics.py) as it stands. 'alone, same seeds':\n"
          "that route fitted alone on the auto rows' seeds just before them, and auto minus it per seed; 'seconds here': its mean\n"
          "time then (the budget's base; older rows: one seed, timed in an earlier session). 'extras': when auto used an ensemble\n"
          "or flips: on a clear validation gain (one-sided McNemar p <= 0.05) or any gain, and whether their scoring had to fit\n"
          "in the budget left. 'threads': torch threads of the auto and alone runs; the headline table ran with 1\n")
    print("| task | best single route: mean test %, seconds here | alone, same seeds | auto | auto ≥ best? | auto − alone, per seed | "
          "chosen | ensemble gain, val | ensemble gain, test | auto seconds (budget) | extras | threads | seeds |\n|---|" + "---|" * 12)
    for task, kept, threads in dict.fromkeys((r["task"], rules(r), threads_of(r)) for r in rows):
        mine = [r for r in rows if (r["task"], rules(r), threads_of(r)) == (task, kept, threads)]
        # against the headline as it stands (a row keeps the headline of its day under reference.test_accuracy)
        reference = {**mine[0]["reference"]}
        reference["test_accuracy"] = headline_means(task, basics).get(reference["route"], reference["test_accuracy"])
        accuracy = statistics.mean(r["test_accuracy"] for r in mine)
        chosen = ", ".join(f"{name} x{sum(r['chosen'] == name for r in mine)}" for name in dict.fromkeys(r["chosen"] for r in mine))
        gain = lambda key: mean_std([r[key] for r in mine if r[key] is not None])  # noqa: E731  (points, as %)
        verdict = "-" if reference["test_accuracy"] != reference["test_accuracy"] else ("yes" if accuracy >= reference["test_accuracy"] else "no")
        seconds = statistics.mean(r["seconds"] for r in mine)
        alone = {r["seed"]: fit for r in mine if (fit := alone_of(results, task, r["seed"], threads))}
        same = "-" if not alone else f"{mean_std([a['test_accuracy'] for a in alone.values()])} ({len(alone)} seeds)"
        differences = ", ".join(f"s{r['seed']} {100 * (r['test_accuracy'] - alone[r['seed']]['test_accuracy']):+.1f}" for r in mine if r["seed"] in alone) or "-"
        print(f"| {task} | {reference['route']} {100 * reference['test_accuracy']:.1f}, {reference['seconds']:.0f} s | {same} | "
              f"{mean_std([r['test_accuracy'] for r in mine])} | {verdict} | {differences} | {chosen} | {gain('ensemble_gain_val')} | "
              f"{gain('ensemble_gain_test')} | {seconds:.0f} ({mine[0]['budget_seconds']:.0f}) | {kept} | {threads} | "
              f"{','.join(str(r['seed']) for r in mine)} |")


if __name__ == "__main__":
    main()
