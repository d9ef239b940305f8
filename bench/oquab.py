"""Oquab et al. 2014 at CPU scale: whole-image finetune / adapt vs. multi-scale patches on generated scenes.

Scenes (``graft scenes``) paste CIFAR-10 objects onto crops of real ImageNet photographs: training and
validation scenes use CIFAR-10 *train* objects and photographs 0-499 of imagenet_sample128, test
scenes use CIFAR-10 *test* objects and photographs 500-999. Two object-size regimes (object side as a
fraction of the 128 px scene side): ``large`` 0.5-0.8, ``small`` 0.15-0.3, both 1-3 objects per
scene. Backbone: the ImageNet MobileNetV2 of ../shared. Metric: test mAP (VOC classification style).
The patches runs also report mAP for several aggregation exponents k (test-time only: same model).

    python bench/oquab.py                          # everything not yet in bench/results/oquab.json
    python bench/oquab.py --table                  # the table of docs/results (generated from the JSON when the docs are built)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from common import EPOCHS_AS_GIVEN, MOBILENET, SHARED, add_result_options, mean_std, printed_table, require_shared, save

REGIMES = {"large": (0.5, 0.8), "small": (0.15, 0.3)}
METHODS = {  # name -> (route, overrides)
    "finetune": ("finetune", []),
    "adapt": ("adapt", []),
    "patches": ("patches", []),
    "patches-no-reweight": ("patches", ["patches.reweight=none"]),
    "patches-sampling": ("patches", ["patches.reweight=sampling"]),
}
K_VALUES = [1, 2, 5, 10, 20]


def build(work: Path, regime: str, args: argparse.Namespace) -> dict[str, Path]:
    """Train / val / test scenes of one regime (built once, kept in ``work``)."""
    from graft.scene_builder import SceneSpec, build_scenes

    photos = np.load(SHARED / "datasets" / "imagenet_sample128.npz")
    halves = {}
    for name, part in (("photos_a", slice(0, 500)), ("photos_b", slice(500, 1000))):
        halves[name] = work / f"{name}.npz"
        if not halves[name].exists():
            np.savez(halves[name], images=photos["images"][part])
    cifar = SHARED / "datasets"
    sets = {"train": (cifar / "cifar10_train.npz", "photos_a", args.train_scenes, 0),
            "val": (cifar / "cifar10_train.npz", "photos_a", args.val_scenes, 1),
            "test": (cifar / "cifar10_test.npz", "photos_b", args.test_scenes, 2)}
    folders = {}
    for split, (objects, background, count, seed) in sets.items():
        folder = work / f"{regime}-{split}"
        if not (folder / "scenes.json").exists():
            shutil.rmtree(folder, ignore_errors=True)
            build_scenes(objects, folder, SceneSpec(count=count, size=128, object_size=REGIMES[regime], objects_per_scene=(1, 3),
                                                    background=str(halves[background]), seed=100 * seed + len(regime)))
        folders[split] = folder
    return folders


def k_scores(run, test_folder: Path) -> dict[str, float]:
    """Test mAP of a patches run for each aggregation exponent k (window features come from the cache)."""
    from graft.data.sources import load_images
    from graft.multilabel import evaluate_scores
    from graft.recipe import PatchesConfig
    from graft.routes.patches import window_scores
    from graft.train.features_loop import head_logits
    from graft.windows import cached_windows

    test = load_images(test_folder, classes=run.classes)
    config = PatchesConfig(**run.meta["recipe"]["patches"])
    windows, _ = cached_windows(run.model, test, run.preprocessing, config)
    logits = head_logits(run.model.get_classifier(), windows["features"])
    return {str(k): evaluate_scores(window_scores(logits, windows["image"], len(test), k), test.targets, test.classes).mean_ap
            for k in K_VALUES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--finetune-seeds", nargs="+", type=int, default=[0, 1, 2], help="whole-image finetune is the costly row")
    parser.add_argument("--variant-seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of the re-weighting variants")
    parser.add_argument("--train-scenes", type=int, default=200)
    parser.add_argument("--val-scenes", type=int, default=40)
    parser.add_argument("--test-scenes", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=96, help="whole-image input side")
    parser.add_argument("--window-size", type=int, default=64, help="input side of each window (patches)")
    parser.add_argument("--windows", type=int, default=40, help="windows per image (paper: ~500)")
    parser.add_argument("--hidden", type=int, default=512, help="FCa units (paper: 2048)")
    parser.add_argument("--stages", default="new:4,all:12", help="whole-image finetune stages (a few hundred images: 4 steps an epoch)")
    parser.add_argument("--work", default="/tmp/graft-oquab", help="scenes and feature cache (kept, so a bench can resume)")
    add_result_options(parser, "oquab")
    args = parser.parse_args()
    if printed_table(args, print_table):
        return
    require_shared()
    import graft

    out, work = Path(args.out), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("GRAFT_CACHE", str(work / "cache"))
    results = json.loads(out.read_text()) if out.exists() else {"runs": []}
    results["config"] = vars(args)
    # finetune rows made with other stages are redone (the stages are part of what a row measured)
    results["runs"] = [r for r in results["runs"] if r["method"] != "finetune" or r.get("stages") == args.stages]
    done = {(r["regime"], r["method"], r["seed"]) for r in results["runs"]}
    # cheap rows first, so an interrupted bench still has every column
    jobs = [(regime, method, seed) for seed in sorted(set(args.seeds) | set(args.finetune_seeds) | set(args.variant_seeds))
            for method in args.methods for regime in args.regimes
            if (method == "finetune" and seed in args.finetune_seeds) or (method.startswith("patches-") and seed in args.variant_seeds)
            or (method in ("adapt", "patches") and seed in args.seeds)]
    for regime, method, seed in jobs:
        if (regime, method, seed) in done:
            continue
        folders = build(work, regime, args)
        route, extra = METHODS[method]
        size = args.window_size if route == "patches" else args.image_size
        started = time.time()
        run = graft.fit(folders["train"], route=route, backbone="mobilenetv2_100", weights=str(MOBILENET), val=folders["val"],
                        test=folders["test"], out=work / f"runs/{regime}-{method}-s{seed}-{int(started)}", quiet=True,
                        overrides=[f"data.image_size={size}", "data.test_fraction=0", f"runtime.seed={seed}", f"adapt.hidden={args.hidden}",
                                   f"patches.max_windows={args.windows}", f"train.stages={args.stages}", "train.augment.preset=flip", EPOCHS_AS_GIVEN,
                                   *extra])
        row = {"regime": regime, "method": method, "seed": seed, "test_mAP": run.metrics["test_mAP"],
               "seconds": round(time.time() - started, 1)}
        if route == "finetune":
            row["stages"] = args.stages
        if route == "patches":
            row["mAP_by_k"] = k_scores(run, folders["test"])
            row["windows"] = {k: run.meta["info"][k] for k in ("train_windows", "background_windows", "dropped_windows")}
        results["runs"].append(row)
        print(row, flush=True)
        save(out, results)
        shutil.rmtree(run.path, ignore_errors=True)
    for regime in args.regimes:
        summary = json.loads((build(work, regime, args)["test"] / "scenes.json").read_text())
        results.setdefault("scenes", {})[regime] = {"test_scenes": summary["scenes"], "test_objects": summary["objects"]}
    save(out, results)
    print_table(results)


def print_table(results: dict) -> None:
    rows = results["runs"]
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    regimes = [g for g in REGIMES if any(r["regime"] == g for r in rows)]
    print("| objects | " + " | ".join(methods) + " |\n|---|" + "---|" * len(methods))
    for regime in regimes:
        cells = []
        for method in methods:
            picked = [r for r in rows if r["regime"] == regime and r["method"] == method]
            seconds = statistics.mean(r["seconds"] for r in picked) if picked else 0
            cells.append(f"{mean_std([r['test_mAP'] for r in picked])} ({seconds:.0f} s, {len(picked)} seed{'s' * (len(picked) > 1)})"
                         if picked else "-")
        low, high = REGIMES[regime]
        print(f"| {regime} ({low}-{high} of the side) | " + " | ".join(cells) + " |")
    patch_rows = [r for r in rows if r["method"] == "patches" and "mAP_by_k" in r]
    if patch_rows:
        print("\nAggregation exponent k (route `patches`, same trained heads, test-time only):\n")
        print("| objects | " + " | ".join(f"k={k}" for k in K_VALUES) + " |\n|---|" + "---|" * len(K_VALUES))
        for regime in regimes:
            picked = [r for r in patch_rows if r["regime"] == regime]
            if picked:
                print(f"| {regime} ({len(picked)} seeds) | " + " | ".join(mean_std([r["mAP_by_k"][str(k)] for r in picked]) for k in K_VALUES) + " |")


if __name__ == "__main__":
    main()
