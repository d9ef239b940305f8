"""Exemplar-CNN on CIFAR-10, evaluated by the paper's CIFAR-10(400) protocol (Dosovitskiy et al. 2014, sec. 4).

1. ``graft pretrain`` the 64c5-64c5-128f network by Exemplar-CNN on the 50,000 CIFAR-10 training
   images without their labels (sized for one CPU thread: see --classes/--copies/--epochs).
2. The same architecture with random weights, and supervised-pretrained on labelled CIFAR-10
   training images (--supervised-per-class per class), as the two references.
3. CIFAR-10(400): for each of --subsets random subsets of 400 labelled training images per class,
   the exemplar protocol (every layer max-pooled over 4 quadrants, linear SVM, C chosen on 15% of
   the subset) scored on the full 10,000-image test split; mean ± std over subsets.

    python bench/exemplar.py                 # results appended to bench/results/exemplar.json
    python bench/exemplar.py --table         # the table of docs/results (generated from the JSON when the docs are built)
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from common import SHARED, mean_std, save

MODELS = ["random", "exemplar", "supervised"]
ARCH = "exemplar-64c5-64c5-128f"


def pretrained_model(kind: str, args: argparse.Namespace, work: Path, results: dict):
    """(model, preprocessing) of ``kind``; pretrained runs are trained once and reused by later invocations."""
    import graft
    from graft.data.split import per_class_subset

    if kind == "random":
        import torch

        from graft.backbones import create_model
        from graft.data.transforms import Preprocessing

        torch.manual_seed(args.seed)
        return create_model(ARCH, 10, pretrained=False).eval(), Preprocessing(32, (0.5,) * 3, (0.25,) * 3)
    path = work / kind
    if (path / "model.json").exists():
        run = graft.load_run(path)
        return run.model, run.preprocessing
    train = SHARED / "datasets" / "cifar10_train.npz"
    started = time.time()
    common = ["model.channels_last=true", f"runtime.seed={args.seed}", "data.batch_size=128"]
    if kind == "exemplar":
        partial = path.parent / f".{path.name}.partial"
        overrides = [*common, f"exemplar.classes={args.classes}", f"exemplar.copies={args.copies}", f"train.stages=all:{args.epochs}"]
        if partial.exists():
            run = graft.pretrain(resume=path, quiet=False)
        else:
            run = graft.pretrain(train, "exemplar", ARCH, out=path, quiet=False, overrides=overrides)
        info = {k: run.metrics.get(k) for k in ("surrogate_train_accuracy", "surrogate_val_accuracy", "chance")}
    elif (path.parent / f".{path.name}.partial").exists():
        run = graft.pretrain(resume=path, quiet=False)
        info = {"val_accuracy": run.metrics.get("val_accuracy")}
    else:
        work.mkdir(parents=True, exist_ok=True)
        data = np.load(train)
        index = per_class_subset(data["labels"], args.supervised_per_class, args.seed + 100)
        subset = work / "supervised_source.npz"
        np.savez(subset, images=data["images"][index], labels=data["labels"][index], classes=data["classes"])
        run = graft.pretrain(subset, "supervised", ARCH, out=path, quiet=False,
                             overrides=[*common, f"train.stages=all:{args.supervised_epochs}", "data.test_fraction=0"])
        info = {"val_accuracy": run.metrics.get("val_accuracy"), "images": int(len(index))}
    results["pretrain"][kind] = {"seconds": round(time.time() - started, 1), **info}
    print(kind, results["pretrain"][kind], flush=True)
    return run.model, run.preprocessing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=1000, help="surrogate classes N (paper: 8000 and more)")
    parser.add_argument("--copies", type=int, default=32, help="copies per class K (paper: 100)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--supervised-per-class", type=int, default=1000)
    parser.add_argument("--supervised-epochs", type=int, default=6)
    parser.add_argument("--subsets", type=int, default=3, help="random CIFAR-10(400) subsets (paper: 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--work", default="runs/bench-exemplar", help="run directories of the pretrained models (reused)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "exemplar.json"))
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    if args.table:
        print_table(json.loads(out.read_text()))
        return
    from graft.data.sources import load_images
    from graft.data.split import per_class_subset, stratified_split
    from graft.protocols import protocol_features, svm_protocol

    results = json.loads(out.read_text()) if out.exists() else {"runs": [], "pretrain": {}}
    results["config"] = {k: v for k, v in vars(args).items() if k != "table"}
    work = Path(args.work)
    os.environ.setdefault("GRAFT_CACHE", str(work / "cache"))
    train = load_images(SHARED / "datasets" / "cifar10_train.npz")
    test = load_images(SHARED / "datasets" / "cifar10_test.npz")
    subsets = [per_class_subset(train.labels, 400, subset) for subset in range(args.subsets)]
    needed = np.unique(np.concatenate(subsets))
    for kind in args.models:
        todo = [s for s in range(args.subsets) if not any(r["model"] == kind and r["subset"] == s for r in results["runs"])]
        if not todo:
            continue
        model, pre = pretrained_model(kind, args, work, results)
        save(out, results)
        started = time.time()
        test_x = protocol_features(model, test, pre, "exemplar")
        pool_x = dict(zip(needed.tolist(), protocol_features(model, train.subset(needed), pre, "exemplar")))
        feature_seconds = time.time() - started
        for subset in todo:
            index = subsets[subset]
            x, y = np.stack([pool_x[i] for i in index.tolist()]), train.labels[index]
            keep, held = stratified_split(y, 0.15, subset, train.classes)
            result = svm_protocol(x[keep], y[keep], x[held], y[held], test_x, test.labels, seed=subset)
            row = {"model": kind, "subset": subset, "test_accuracy": result.accuracy, "c": result.c, "dimensions": result.dimensions,
                   "svm_seconds": result.seconds, "feature_seconds": round(feature_seconds, 1), "test_count": result.test_count}
            results["runs"].append(row)
            print(row, flush=True)
            save(out, results)
    print_table(results)


def print_table(results: dict) -> None:
    rows, pre = results["runs"], results.get("pretrain", {})
    print("| network (64c5-64c5-128f) | CIFAR-10(400) test accuracy | subsets | pretraining |\n|---|---:|---:|---|")
    labels = {"random": "random weights", "exemplar": "Exemplar-CNN (no labels)", "supervised": "supervised (labels)"}
    for kind in MODELS:
        picked = [r["test_accuracy"] for r in rows if r["model"] == kind]
        info = pre.get(kind, {})
        if not picked and not info:
            continue
        detail = "-" if kind == "random" else f"{info.get('seconds', 0):.0f} s"
        if kind == "exemplar" and info.get("surrogate_val_accuracy") is not None:
            detail += f", surrogate accuracy {100 * info['surrogate_val_accuracy']:.1f}% (chance {100 * info['chance']:.2f}%)"
        print(f"| {labels[kind]} | {mean_std(picked) if picked else 'not measured'} | {len(picked)} | {detail} |")


if __name__ == "__main__":
    main()
