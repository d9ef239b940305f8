"""Unlabelled images and a teacher on CIFAR-10: labels only vs pseudo-labels vs a distilled small student.

CIFAR-10 with 10 and 100 labels per class; a pool of other training images is given as ``--unlabeled``
(its labels are read only for ``--audit``, the pseudo-label precision); the full 10,000-image test split.
Rows: (a) the ImageNet MobileNetV2, ``lpft`` on the labels only; (b) the same + route ``pseudo`` with (a)
as labeller; (c) a small student (graft_convnet_s, random init, 32 px) on the labels only (``scratch``)
vs ``distill`` from (b) on labels + pool; (d) FixMatch consistency (``pseudo.method=consistency``) from the
pretrained backbone on labels + a pool of ``--consistency-pool`` 10,000 images. Mean ± std over seeds, seconds per run, the student's
speed-up over the teacher (inference images/s, each at its own input size, one thread).

    python bench/semi.py                                          # CPU scale, see docs/results/semi.md for the reductions
    python bench/semi.py --tasks cifar10-100 --seeds 0 1 --pool 2000
    python bench/semi.py --tasks cifar10-10 --rows consistency --seeds 0   # needs row (a) of the seed for its gain
    python bench/semi.py --table
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from common import EPOCHS_AS_GIVEN, MOBILENET, SHARED, add_result_options, mean_std, pool_npz, printed_table, require_shared, save, subset_npz

ROWS = ["teacher", "pseudo", "consistency", "student", "distill"]
LABELS = {"teacher": "(a) MobileNetV2 lpft, labels only", "pseudo": "(b) (a) + pseudo-labels",
          "consistency": "(d) FixMatch consistency (pseudo.method=consistency)",
          "student": "(c) small student, labels only", "distill": "(c) small student distilled from (b)"}
TASKS = ["cifar10-100", "cifar10-10"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=["teacher", "pseudo"], choices=ROWS)
    parser.add_argument("--pool", type=int, default=2000, help="unlabelled images (CPU scale; the full rest is 49,000+)")
    parser.add_argument("--consistency-pool", type=int, default=10000, help="unlabelled images of row (d)")
    parser.add_argument("--teacher-size", type=int, default=64, help="MobileNetV2 input side (CPU scale; transfer_basics uses 96)")
    parser.add_argument("--teacher-stages", default="new:1,all:6")
    parser.add_argument("--student", default="graft_convnet_s", help="94k parameters, about 21 MFLOPs at 32 px")
    parser.add_argument("--student-size", type=int, default=32)
    parser.add_argument("--student-stages", default="all:15")
    add_result_options(parser, "semi")
    parser.add_argument("--clean", action="store_true", help="delete the run directories at the end")
    args = parser.parse_args()
    if printed_table(args, print_table):
        return
    require_shared()
    import graft
    from graft.runs import partial_path

    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"runs": []}
    results["config"] = vars(args)
    done = {(r["task"], r["row"], r["seed"]) for r in results["runs"]}
    work = Path(tempfile.gettempdir()) / "graft-semi"  # kept between invocations: rows (b), (c) need the runs of (a), (b)
    work.mkdir(exist_ok=True)
    os.environ.setdefault("GRAFT_CACHE", str(work / "cache"))
    test = str(SHARED / "datasets" / "cifar10_test.npz")
    for task in args.tasks:
        per_class = int(task.split("-")[1])
        for seed in args.seeds:
            train = str(subset_npz(SHARED / "datasets" / "cifar10_train.npz", per_class, seed, work))
            pool = str(pool_npz(per_class, seed, args.pool, work))
            # the pseudo-label selection at graft's defaults (self-adaptive per-class thresholds)
            common = ["data.test_fraction=0", f"runtime.seed={seed}", "pseudo.audit=true", EPOCHS_AS_GIVEN]
            teacher_set = [f"data.image_size={args.teacher_size}", f"train.stages={args.teacher_stages}"]
            student_set = [f"data.image_size={args.student_size}", f"train.stages={args.student_stages}", "model.pretrained=false",
                           "train.augment.preset=none"]  # augmentation off: the teacher's logits are cached once
            plans = {
                "teacher": dict(route="lpft", backbone="mobilenetv2_100", weights=str(MOBILENET), overrides=teacher_set),
                "pseudo": dict(route="pseudo", backbone="mobilenetv2_100", weights=str(MOBILENET),
                               overrides=[*teacher_set, f"data.unlabeled={pool}", f"distill.teacher={work / f'{task}-teacher-s{seed}'}"]),
                "consistency": dict(route="pseudo", backbone="mobilenetv2_100", weights=str(MOBILENET),
                                    overrides=[*teacher_set, "pseudo.method=consistency",
                                               f"data.unlabeled={pool_npz(per_class, seed, args.consistency_pool, work)}"]),
                "student": dict(route="scratch", backbone=args.student, overrides=student_set),
                "distill": dict(route="distill", backbone=args.student,
                                overrides=[*student_set, f"data.unlabeled={pool}", f"distill.teacher={work / f'{task}-pseudo-s{seed}'}"]),
            }
            for row in args.rows:
                needs = {"pseudo": "teacher", "distill": "pseudo"}.get(row)
                if (task, row, seed) in done:
                    continue
                if needs and not (work / f"{task}-{needs}-s{seed}").exists():
                    print(f"skip {task} {row} s{seed}: its teacher row '{needs}' is not in {work}", flush=True)
                    continue
                plan = plans[row]
                shutil.rmtree(partial_path(work / f"{task}-{row}-s{seed}"), ignore_errors=True)  # left by an interrupted bench
                started = time.time()
                run = graft.fit(train, route=plan["route"], backbone=plan["backbone"], weights=plan.get("weights"), test=test,
                                out=work / f"{task}-{row}-s{seed}", quiet=True, overrides=[*common, *plan["overrides"]])
                info = run.meta["info"]
                entry = {"task": task, "row": row, "seed": seed, "test_accuracy": run.metrics["test_accuracy"],
                         "seconds": round(time.time() - started, 1), "backbone": run.meta["backbone"],
                         "pool": args.consistency_pool if row == "consistency" else args.pool,
                         "image_size": run.meta["preprocessing"]["size"]}
                if "rounds" in info:
                    entry["pseudo_labels"] = {k: info["rounds"][0][k] for k in ("selected", "of", "precision", "per_class")}
                if "unlabelled_used" in info:
                    entry["unlabelled_used"] = info["unlabelled_used"]
                if "sizes" in info:
                    entry["sizes"] = info["sizes"]
                results["runs"].append(entry)
                print({k: v for k, v in entry.items() if k != "sizes"}, flush=True)
                save(out, results)
    print_table(results)
    if args.clean:
        shutil.rmtree(work, ignore_errors=True)


def print_table(results: dict) -> None:
    rows = results["runs"]
    shown = [r for r in ROWS if any(x["row"] == r for x in rows)]
    print("| task | " + " | ".join(LABELS[r] for r in shown) + " | (b) - (a), per seed | (d) - (a), per seed | seeds |\n|---|" + "---|" * (len(shown) + 3))
    for task in dict.fromkeys(r["task"] for r in rows):
        cells = []
        for row in shown:
            picked = [r for r in rows if r["task"] == task and r["row"] == row]
            seconds = sum(r["seconds"] for r in picked) / max(len(picked), 1)
            cells.append(f"{mean_std([r['test_accuracy'] for r in picked])} ({seconds:.0f} s)" if picked else "-")
        teacher = {r["seed"]: r["test_accuracy"] for r in rows if r["task"] == task and r["row"] == "teacher"}
        gains = {row: ", ".join(f"{100 * (r['test_accuracy'] - teacher[r['seed']]):+.1f}" for r in sorted(rows, key=lambda r: r["seed"])
                                if r["task"] == task and r["row"] == row and r["seed"] in teacher) or "-" for row in ("pseudo", "consistency")}
        seeds = sorted({r["seed"] for r in rows if r["task"] == task})
        print(f"| {task} | {' | '.join(cells)} | {gains['pseudo']} | {gains['consistency']} | {','.join(map(str, seeds))} |")
    print("\n| task | pseudo-labels taken (of pool) | their precision | teacher params / MFLOPs / img/s | student params / MFLOPs / img/s | student speed-up |")
    print("|---|---|---|---|---|---|")
    for task in dict.fromkeys(r["task"] for r in rows):
        taken = [r["pseudo_labels"] for r in rows if r["task"] == task and r["row"] == "pseudo" and "pseudo_labels" in r]
        sizes = [r["sizes"] for r in rows if r["task"] == task and "sizes" in r]
        taken_cell = f"{np.mean([t['selected'] for t in taken]):.0f} of {taken[0]['of']}" if taken else "-"
        precision = mean_std([t["precision"] for t in taken if t["precision"] is not None]) if taken else "-"
        if sizes:
            t, s = sizes[0]["teacher"], sizes[0]["student"]
            speed = np.mean([z["speedup"] for z in sizes])
            print(f"| {task} | {taken_cell} | {precision} | {t['parameters'] / 1e6:.2f} M / {t['mflops']:.0f} @{t['input_size']} px / "
                  f"{np.mean([z['teacher']['images_per_second'] for z in sizes]):.0f} | {s['parameters'] / 1e6:.2f} M / {s['mflops']:.0f} "
                  f"@{s['input_size']} px / {np.mean([z['student']['images_per_second'] for z in sizes]):.0f} | {speed:.1f}x |")
        else:
            print(f"| {task} | {taken_cell} | {precision} | - | - | - |")


if __name__ == "__main__":
    main()
