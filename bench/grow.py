"""Developmental networks at CPU scale: the structure of Wang et al. 2017's Tables 1 and 3, and continual growth.

(a) graft_alexnet_32 trained from scratch on CIFAR-10 classes 0-4 (the source run) -> classes 5-9, 100 labels/class.
(b) ImageNet MobileNetV2 (../shared weights) -> PneumoniaMNIST, 100 labels/class, 64 px.
Rows fine-tune / DA / WA / DWA / WWA (+ DA and WA without normalisation), columns the scenarios
new / top-1 / top-2 / all; mean ± std over seeds. Continual: source -> CIFAR 5-9 -> PneumoniaMNIST
with its accuracy/forgetting matrix, with and without LwF.

    python bench/grow.py                  # everything (about 35 min of one CPU thread)
    python bench/grow.py --table          # the docs tables (docs/results/grow.md) from bench/results/grow.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from common import EPOCHS_AS_GIVEN, MOBILENET, SHARED, add_result_options, mean_std, printed_table, require_shared, save

RESULTS = Path(__file__).parent / "results"
ROWS = {"fine-tune": ("finetune", []), "DA": ("grow-depth", []), "DA, norm": ("grow-depth", ["grow.normalize=true"]),
        "WA": ("grow-width", []), "WA, no norm": ("grow-width", ["grow.normalize=false"]), "DWA": ("grow-both", []),
        "WWA": ("grow-width2", [])}
SCENARIOS = ["new", "top-1", "top-2", "all"]


def class_subset(source: Path, classes: list[int], per_class: int | None, seed: int, out: Path) -> Path:
    """Images of ``classes`` (relabelled 0..k-1), ``per_class`` of each (None: all), seeded; cached as .npz."""
    if not out.exists():
        data = np.load(source)
        rng = np.random.default_rng(seed)
        picked = [rng.permutation(np.flatnonzero(data["labels"] == c))[:per_class] for c in classes]
        index = np.sort(np.concatenate(picked))
        remap = {c: i for i, c in enumerate(classes)}
        np.savez(out, images=data["images"][index], labels=np.array([remap[int(v)] for v in data["labels"][index]]),
                 classes=data["classes"][classes])
    return out


def task_files(task: str, seed: int, work: Path) -> dict[str, str]:
    cifar, pneumonia = SHARED / "datasets" / "cifar10_train.npz", SHARED / "datasets" / "pneumoniamnist_train.npz"
    if task == "source":
        return {"data": str(class_subset(cifar, [0, 1, 2, 3, 4], 1000, 0, work / "cifar04_1000pc.npz")),
                "test": str(class_subset(SHARED / "datasets" / "cifar10_test.npz", [0, 1, 2, 3, 4], 300, 0, work / "cifar04_test300.npz"))}
    if task == "cifar59":
        return {"data": str(class_subset(cifar, [5, 6, 7, 8, 9], 100, seed, work / f"cifar59_100pc_s{seed}.npz")),
                "test": str(class_subset(SHARED / "datasets" / "cifar10_test.npz", [5, 6, 7, 8, 9], 300, 0, work / "cifar59_test300.npz"))}
    return {"data": str(class_subset(pneumonia, [0, 1], 100, seed, work / f"pneumonia_100pc_s{seed}.npz")),
            "test": str(SHARED / "datasets" / "pneumoniamnist_test.npz")}


def clear(path: Path) -> None:
    """Remove a run directory and an interrupted one (a killed bench leaves ``.NAME.partial``)."""
    shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(path.parent / f".{path.name}.partial", ignore_errors=True)


def source_run(work: Path, epochs: int) -> Path:
    """graft_alexnet_32 from scratch on CIFAR-10 classes 0-4 (1000 per class): the 'pretrained' network of (a)."""
    import graft

    path = work / "source"
    if not (path / "model.json").exists():
        clear(path)
        files = task_files("source", 0, work)
        graft.fit(files["data"], route="scratch", backbone="graft_alexnet_32", test=files["test"], out=path, quiet=True,
                  overrides=[f"train.stages=all:{epochs}", "data.test_fraction=0", "data.val_fraction=0.1", "train.augment.preset=flip",
                             EPOCHS_AS_GIVEN])
    return path


LR = {"a": 0.01, "b": 0.01, "b-lr": 0.001}  # new layers; pretrained ones at lr/10


def common_overrides(transfer: str, seed: int, epochs: int) -> list[str]:
    size = 32 if transfer == "a" else 64
    return [f"data.image_size={size}", f"grow.lr={LR[transfer]}", "data.test_fraction=0", "data.val_fraction=0", "data.batch_size=32", f"runtime.seed={seed}",
            "train.augment.preset=flip", f"grow.epochs={epochs}", f"grow.step_epochs={max(1, 2 * epochs // 3)}", EPOCHS_AS_GIVEN]


def cell(transfer: str, row: str, scenario: str, seed: int, epochs: int, work: Path) -> dict:
    """One fit: a row of Table 1/3 (fine-tune or a growth) in one scenario, on transfer (a) or (b)."""
    import graft
    from graft.routes.grow import PAPER_TRAIN

    route, extra = ROWS[row]
    files = task_files("cifar59" if transfer == "a" else "pneumonia", seed, work)
    backbone, weights = (f"run:{work / 'source'}", None) if transfer == "a" else ("mobilenetv2_100", str(MOBILENET))
    overrides = common_overrides(transfer, seed, epochs) + extra
    if route == "finetune":  # the plain fine-tuning baseline, trained with exactly the grow routes' paper recipe
        overrides += [f"train.{k}={v}" for k, v in PAPER_TRAIN.items()] + [
            f"train.lr={LR[transfer]}", f"train.step_epochs={max(1, 2 * epochs // 3)}", f"train.stages={scenario}:{epochs}"]
    else:
        overrides.append(f"grow.train={scenario}")
    out = work / f"{transfer}-{route}-{scenario}-{len(extra)}-s{seed}"
    clear(out)
    started = time.time()
    run = graft.fit(files["data"], route=route, backbone=backbone, weights=weights, test=files["test"], quiet=True,
                    out=out, overrides=overrides)
    shutil.rmtree(run.path, ignore_errors=True)
    return {"transfer": transfer, "row": row, "scenario": scenario, "seed": seed, "epochs": epochs,
            "test_accuracy": run.metrics["test_accuracy"], "new_parameters": run.meta["info"].get("new_parameters"),
            "seconds": round(time.time() - started, 1)}


def continual(lwf: float, epochs: int, work: Path) -> dict:
    """source (CIFAR 0-4) -> task A (CIFAR 5-9, 100/class) -> task B (PneumoniaMNIST at 32 px, 100/class), WA, scenario all."""
    import graft

    started = time.time()
    previous = work / "source"
    for task, name in (("cifar59", "A"), ("pneumonia", "B")):
        files = task_files(task, 0, work)
        out = work / f"continual-lwf{lwf}-{name}"
        clear(out)
        step = graft.grow(previous, files["data"], route="grow-width", test=files["test"], out=out, quiet=True,
                          overrides=common_overrides("a", 0, epochs) + ["grow.train=all", f"grow.lwf={lwf}"])
        previous = step.path
    info = step.meta["info"]
    return {"lwf": lwf, "tasks": [t["name"] for t in info["tasks"]], "accuracy_matrix": info["accuracy_matrix"],
            "forgetting": info["forgetting"], "epochs": epochs, "seconds": round(time.time() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/graft-grow-bench", help="data subsets and the source run (kept for resuming)")
    parser.add_argument("--source-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=6, help="epochs of every transfer run (lr / 10 after 2/3 of them)")
    parser.add_argument("--seeds-a", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seeds-b", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--norm-scenario", default="all", help="scenario of the with/without normalisation rows (Table 3)")
    parser.add_argument("--only", choices=["source", "a", "b", "continual"], nargs="+", default=["source", "a", "b", "continual"])
    add_result_options(parser, "grow")
    args = parser.parse_args()
    if printed_table(args, print_tables):
        return
    require_shared()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GRAFT_CACHE", str(work / "cache"))
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"runs": [], "continual": []}
    results["config"] = {k: v for k, v in vars(args).items() if k not in ("table", "out")}
    path = source_run(work, args.source_epochs)
    meta = json.loads((path / "model.json").read_text())
    results["source"] = {"test_accuracy": meta["metrics"]["test_accuracy"], "seconds": meta["metrics"]["seconds"], "epochs": args.source_epochs}
    save(out, results)
    done = {(r["transfer"], r["row"], r["scenario"], r["seed"]) for r in results["runs"]}
    plan = []
    for seed in sorted(set(args.seeds_a) | set(args.seeds_b)):
        for transfer in ("a", "b", "b-lr"):
            if transfer.split("-")[0] not in args.only or seed not in (args.seeds_a if transfer == "a" else args.seeds_b):
                continue
            plan += [(transfer, row, scenario, seed) for row in ROWS for scenario in SCENARIOS
                     if "norm" not in row or scenario == args.norm_scenario]
            plan += [(transfer, row, args.norm_scenario, seed) for row in ("DA", "WA") if args.norm_scenario not in SCENARIOS]
        if seed == 0 and "continual" in args.only:
            plan += [("continual", lwf) for lwf in (0.0, 1.0)]
    for item in plan:
        if item[0] == "continual":
            if any(c["lwf"] == item[1] for c in results["continual"]):
                continue
            results["continual"].append(continual(item[1], args.epochs, work))
            print(results["continual"][-1], flush=True)
        elif item not in done:
            results["runs"].append(cell(*item, args.epochs, work))
            print(results["runs"][-1], flush=True)
        save(out, results)
    print_tables(results)


def print_tables(results: dict) -> None:
    runs = results["runs"]
    source = results.get("source", {})
    names = {"a": "(a) graft_alexnet_32, CIFAR-10 classes 0-4 -> 5-9, 100 labels/class",
             "b": "(b) ImageNet MobileNetV2 -> PneumoniaMNIST, 100 labels/class, 64 px, the paper's lr (new layers 0.01)",
             "b-lr": "(b') the same with lr / 10 (new layers 0.001, pretrained 0.0001)"}

    def picked(transfer: str, row: str, scenario: str) -> list[float]:
        return [r["test_accuracy"] for r in runs if (r["transfer"], r["row"], r["scenario"]) == (transfer, row, scenario)]

    for transfer in ("a", "b", "b-lr"):
        if not any(r["transfer"] == transfer for r in runs):
            continue
        seeds = sorted({r["seed"] for r in runs if r["transfer"] == transfer})
        seconds = sum(r["seconds"] for r in runs if r["transfer"] == transfer)
        print(f"\n**{names[transfer]}**: test accuracy %, mean ± std over seeds {','.join(map(str, seeds))} "
              f"({seconds / 60:.0f} min of one CPU thread)\n")
        print("| network | new | top-1 | top-2 | all |\n|---|---|---|---|---|")
        for row in ROWS:
            if "norm" in row:
                continue
            print(f"| {row} | " + " | ".join(f"{mean_std(picked(transfer, row, s))} ({len(picked(transfer, row, s))})" if picked(transfer, row, s)
                                           else "-" for s in SCENARIOS) + " |")
        scenario = results.get("config", {}).get("norm_scenario", "all")
        print(f"\nnormalisation + scaling (Table 3), scenario {scenario}:\n\n| network | with | without |\n|---|---|---|")
        print(f"| DA | {mean_std(picked(transfer, 'DA, norm', scenario))} | {mean_std(picked(transfer, 'DA', scenario))} |")
        print(f"| WA | {mean_std(picked(transfer, 'WA', scenario))} | {mean_std(picked(transfer, 'WA, no norm', scenario))} |")
    if source:
        print(f"\nsource run: graft_alexnet_32 from scratch on CIFAR-10 classes 0-4 (1000/class), {source['epochs']} epochs, "
              f"test accuracy {100 * source['test_accuracy']:.1f} % ({source['seconds']:.0f} s)")
    for entry in results.get("continual", []):
        tasks = entry["tasks"]
        print(f"\n**continual growth (WA, all), LwF {'on (weight ' + str(entry['lwf']) + ')' if entry['lwf'] else 'off'}**: "
              f"test accuracy % of each task (column) after each step (row); {entry['seconds']:.0f} s\n")
        print("| after | " + " | ".join(tasks) + " |\n|---|" + "---|" * len(tasks))
        for name, row in zip(tasks, entry["accuracy_matrix"]):
            print(f"| {name} | " + " | ".join("-" if v is None else f"{100 * v:.1f}" for v in row) + " |")
        print("| forgetting | " + " | ".join("-" if f is None else f"{100 * f:+.1f}" for f in entry["forgetting"]) + " | - |")


if __name__ == "__main__":
    main()
