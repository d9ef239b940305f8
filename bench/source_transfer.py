"""Source-task training, then transfer: CIFAR-10 classes 0-4 -> classes 5-9 (DESIGN.md route 6).

1. ``graft pretrain`` (supervised) the 64c5-64c5-128f network at 32 px on CIFAR-10 training images
   of classes 0-4 (--source-per-class per class).
2. Target task: classes 5-9 with 10 and 100 labelled images per class (seeded subsets), tested on
   all 5,000 test images of classes 5-9; routes linear / finetune / lpft from the source backbone
   (``--backbone run:PATH``) vs scratch (same architecture, random weights); mean ± std over seeds.

    python bench/source_transfer.py          # results appended to bench/results/source_transfer.json
    python bench/source_transfer.py --table
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from common import SHARED, add_row, current, head_init_of, mean_std, min_steps_of, save

ROUTES = ["scratch", "linear", "finetune", "lpft"]
ARCH = "exemplar-64c5-64c5-128f"


def class_npz(source: Path, classes: list[int], per_class: int | None, seed: int, out: Path) -> Path:
    """Images of ``classes`` (relabelled 0..k-1), ``per_class`` of each (all if None), as an .npz."""
    from graft.data.split import per_class_subset

    if out.exists():
        return out
    data = np.load(source)
    index = np.flatnonzero(np.isin(data["labels"], classes))
    if per_class is not None:
        index = index[per_class_subset(data["labels"][index], per_class, seed)]
    mapping = {c: i for i, c in enumerate(classes)}
    labels = np.array([mapping[int(c)] for c in data["labels"][index]])
    np.savez(out, images=data["images"][index], labels=labels, classes=data["classes"][classes])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source-per-class", type=int, default=1000)
    parser.add_argument("--source-epochs", type=int, default=8)
    parser.add_argument("--shots", nargs="+", type=int, default=[10, 100])
    parser.add_argument("--routes", nargs="+", default=ROUTES, choices=ROUTES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--stages", default="new:1,all:9", help="graft's default")
    parser.add_argument("--work", default="runs/bench-source-transfer")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "source_transfer.json"))
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    if args.table:
        print_table(json.loads(out.read_text()))
        return
    import graft

    results = json.loads(out.read_text()) if out.exists() else {"runs": [], "source": {}}
    results["config"] = {k: v for k, v in vars(args).items() if k != "table"}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GRAFT_CACHE", str(work / "cache"))
    datasets = SHARED / "datasets"
    source_run = work / "source"
    if not (source_run / "model.json").exists():
        started = time.time()
        if (work / ".source.partial").exists():
            run = graft.pretrain(resume=source_run)
        else:
            source = class_npz(datasets / "cifar10_train.npz", [0, 1, 2, 3, 4], args.source_per_class, 0, work / "source.npz")
            run = graft.pretrain(source, "supervised", ARCH, out=source_run, overrides=[f"train.stages=all:{args.source_epochs}",
                                 "data.test_fraction=0", "data.batch_size=128",
                                 "train.min_steps=0"])
        results["source"] = {"seconds": round(time.time() - started, 1), "val_accuracy": run.metrics.get("val_accuracy"),
                             "images": 5 * args.source_per_class, "epochs": args.source_epochs}
        save(out, results)
        print("source", results["source"], flush=True)
    test = class_npz(datasets / "cifar10_test.npz", [5, 6, 7, 8, 9], None, 0, work / "target_test.npz")
    done = {(r["shots"], r["route"], r["seed"]) for r in results["runs"] if current(r)}
    for shots in args.shots:
        for seed in args.seeds:
            train = class_npz(datasets / "cifar10_train.npz", [5, 6, 7, 8, 9], shots, seed, work / f"target_{shots}_s{seed}.npz")
            for route in args.routes:
                if (shots, route, seed) in done:
                    continue
                shutil.rmtree(work / f".{shots}-{route}-s{seed}.partial", ignore_errors=True)  # a run interrupted earlier starts again
                started = time.time()
                backbone = ARCH if route == "scratch" else f"run:{source_run}"
                run = graft.fit(train, route=route, backbone=backbone, test=test, out=work / f"{shots}-{route}-s{seed}", quiet=True,
                                overrides=["data.test_fraction=0", f"runtime.seed={seed}", f"train.stages={args.stages}"]
                                + (["model.pretrained=false", "train.bn_mode=train"] if route == "scratch" else []))
                row = {"shots": shots, "route": route, "seed": seed, "test_accuracy": run.metrics["test_accuracy"],
                       "test_count": run.metrics["test_count"], "seconds": round(time.time() - started, 1), "min_steps": min_steps_of(route), "head_init": head_init_of(route)}
                results = add_row(out, row, current)
                print(row, flush=True)
                shutil.rmtree(run.path, ignore_errors=True)
    print_table(results)


def print_table(results: dict) -> None:
    rows = [r for r in results["runs"] if current(r)]
    print(f"| labels per class (classes 5-9) | {' | '.join(ROUTES)} | seeds |\n|---|" + "---|" * (len(ROUTES) + 1))
    for shots in sorted({r["shots"] for r in rows}):
        cells = []
        for route in ROUTES:
            picked = [r for r in rows if r["shots"] == shots and r["route"] == route]
            seconds = sum(r["seconds"] for r in picked) / max(len(picked), 1)
            cells.append(f"{mean_std([r['test_accuracy'] for r in picked])} ({seconds:.0f} s)" if picked else "-")
        seeds = sorted({r["seed"] for r in rows if r["shots"] == shots})
        print(f"| {shots} | {' | '.join(cells)} | {','.join(map(str, seeds))} |")
    source = results.get("source", {})
    if source:
        print(f"\nsource: {source['images']} images of classes 0-4, {source['epochs']} epochs, {source['seconds']:.0f} s, "
              f"validation accuracy {100 * (source.get('val_accuracy') or 0):.1f}%")


if __name__ == "__main__":
    main()
