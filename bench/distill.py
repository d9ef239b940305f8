"""Distillation that measures distillation: how much of the teacher-student gap a distilled student recovers.

Teacher: the ImageNet MobileNetV2 trained by graft's best route on the task (``finetune`` on both tasks in
bench/results/transfer_basics.json) at 128 px. Student: the same pretrained MobileNetV2 at 48 px (about 7x fewer
FLOPs), trained (a) by ``lpft`` on the labels only, (b) by route ``distill`` (Hinton et al. 2015) from the teacher on
the labels + an unlabelled pool, with the same stages. Both student rows train without augmentation by default
(``--student-augment``): then the teacher's logits are computed once, at its own 128 px from the source pixels
(with augmentation it would see each 48 px student batch upscaled to 128 px, and cost a 128 px forward pass per step).
Per seed the share of the gap recovered is (b - a) / (teacher - a); the issue's goal is >= 50 % on the mean over 3 seeds.

Tasks: ``cifar10-N`` (N labels per class of the CIFAR-10 training split, the full 10,000-image test split, validation
split off the labels by graft; pool: ``--pool`` other training images) and ``pneumonia`` (PneumoniaMNIST, all 4,708
labels and the official val and test splits as transfer_basics uses them; no other images exist, so the transfer set
is the labelled images alone) or ``pneumonia-N`` (N labels per class; pool: the other training images).

    python bench/distill.py                                        # both tasks, 3 seeds (hours on CPU)
    python bench/distill.py --tasks pneumonia --seeds 0            # a process per task can add to the same results
    python bench/distill.py --rows distill --set distill.temperature=2 distill.alpha=0.5   # another T/alpha: rows of its own
    python bench/distill.py --quick                                # the whole pipeline at tiny sizes (~2 min), a temporary file
    python bench/distill.py --table
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from common import MOBILENET, SHARED, add_row, mean_std, min_steps_of, pool_npz, require_shared, subset_npz

ROWS = ["teacher", "labels", "distill"]
TASKS = ["cifar10-100", "pneumonia"]
TEACHER_ROUTES = {"cifar10-100": "finetune", "pneumonia": "finetune"}  # the best test accuracy in transfer_basics.json
STAGES = {"cifar10": "new:1,all:9", "pneumonia": "new:1,all:4"}  # transfer_basics' stages (graft's default; fewer epochs on 4,708 images)
QUICK = dict(tasks=["cifar10-20", "pneumonia-20"], seeds=[0], teacher_size=32, student_size=24, pool=200, stages="new:1,all:1")
DATASETS = SHARED / "datasets"


def task_name(text: str) -> str:
    if not re.fullmatch(r"cifar10-\d+|pneumonia(-\d+)?", text):
        raise argparse.ArgumentTypeError(f"task '{text}': give cifar10-N or pneumonia or pneumonia-N (N labels per class)")
    return text


def task_files(task: str, seed: int, pool: int, folder: Path, quick: bool) -> dict[str, Optional[Path]]:
    """The labelled training file, validation (None: graft splits it off), test and unlabelled pool (None: no pool) of ``task``."""
    dataset, _, count = task.partition("-")
    if dataset == "cifar10":
        source, val = DATASETS / "cifar10_train.npz", None
        test = subset_npz(DATASETS / "cifar10_test.npz", 50, 0, folder) if quick else DATASETS / "cifar10_test.npz"
    else:
        source, val, test = (DATASETS / f"pneumoniamnist_{split}.npz" for split in ("train", "val", "test"))
    if not count:
        return {"data": source, "val": val, "test": test, "pool": None}
    per_class = int(count)
    return {"data": subset_npz(source, per_class, seed, folder), "val": val, "test": test,
            "pool": pool_npz(per_class, seed, pool, folder, source) if pool > 0 else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", type=task_name, help=f"default {' '.join(TASKS)}")
    parser.add_argument("--seeds", nargs="+", type=int, help="default 0 1 2")
    parser.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS, help="teacher, (a) labels (lpft), (b) distill")
    parser.add_argument("--teacher-route", nargs="+", default=[], metavar="TASK=ROUTE",
                        help=f"the teacher's route per task (default {TEACHER_ROUTES}; other tasks: finetune)")
    parser.add_argument("--teacher-size", type=int, help="teacher input side (default 128)")
    parser.add_argument("--student-size", type=int, help="student input side (default 48)")
    parser.add_argument("--stages", help=f"stages of teacher and students (default per dataset: {STAGES})")
    parser.add_argument("--pool", type=int, help="unlabelled images of cifar10-N and pneumonia-N (default 5000; all left if fewer)")
    parser.add_argument("--student-augment", default="none", help="train.augment.preset of both student rows (none: cached teacher logits)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="recipe overrides of the distill row (e.g. distill.temperature=2 distill.alpha=0.5); recorded in its row")
    parser.add_argument("--quick", action="store_true", help=f"tiny sizes {QUICK}, 1 epoch per stage, to a temporary results file")
    parser.add_argument("--out", help="results file (default bench/results/distill.json; --quick: a temporary one)")
    parser.add_argument("--table", action="store_true", help="only print the table of the results saved in --out")
    parser.add_argument("--clean", action="store_true", help="delete the kept teacher runs and data subsets at the end")
    args = parser.parse_args()
    defaults = QUICK if args.quick else dict(tasks=TASKS, seeds=[0, 1, 2], teacher_size=128, student_size=48, pool=5000, stages=None)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    work = Path(tempfile.gettempdir()) / ("graft-distill-quick" if args.quick else "graft-distill")  # teachers kept between invocations
    out = Path(args.out or (work / "distill.json" if args.quick else Path(__file__).parent / "results" / "distill.json"))
    if args.table:
        print_table(json.loads(out.read_text()))
        return
    require_shared()
    routes = {**TEACHER_ROUTES, **dict(pair.split("=", 1) for pair in args.teacher_route)}
    work.mkdir(exist_ok=True)
    os.environ.setdefault("GRAFT_CACHE", str(work / "cache"))
    done = {identity(r) for r in json.loads(out.read_text())["runs"]} if out.exists() else set()
    for task in args.tasks:
        for seed in args.seeds:
            files = task_files(task, seed, args.pool, work, args.quick)
            run_rows(task, seed, files, routes.get(task, "finetune"), args, work, out, done)
    print_table(json.loads(out.read_text()))
    if args.clean:
        shutil.rmtree(work, ignore_errors=True)


def run_rows(task: str, seed: int, files: dict[str, Optional[Path]], route: str, args: argparse.Namespace, work: Path, out: Path,
             done: set) -> None:
    """The teacher (trained when its row or a distill row needs it and its run is not kept), then (a) and (b) of one seed."""
    import graft
    import torch
    from graft.runs import load_run, partial_path

    stages = args.stages or STAGES[task.partition("-")[0]]
    floor = ["train.min_steps=0"] if args.quick else []  # the full bench keeps graft's default step floor
    common = [f"runtime.seed={seed}", "data.test_fraction=0", f"train.stages={stages}", *floor]
    student = [f"data.image_size={args.student_size}", f"train.augment.preset={args.student_augment}"]
    pool = 0 if files["pool"] is None else len(load_npz_labels(files["pool"]))
    teacher_setting = f"{route} {args.teacher_size}px {stages}"
    labels_setting = f"lpft {args.student_size}px {stages} augment={args.student_augment}"
    settings = {"teacher": teacher_setting, "labels": labels_setting,
                "distill": " ".join([f"distill {args.student_size}px {stages} augment={args.student_augment} pool={pool}"
                                     f" from {teacher_setting}", *args.overrides])}
    teacher_dir = work / f"{task}-teacher-{route}-{args.teacher_size}px-{stages.replace(':', '').replace(',', '_')}-s{seed}"
    wanted = [row for row in args.rows if (task, row, seed, settings[row]) not in done]
    if "distill" in wanted and not teacher_dir.exists():
        wanted = ["teacher", *[row for row in wanted if row != "teacher"]]  # a new teacher replaces the recorded one
    if "teacher" in wanted:  # its row is recorded with the seconds it took, so a kept run without a row is trained again
        shutil.rmtree(teacher_dir, ignore_errors=True)
        shutil.rmtree(partial_path(teacher_dir), ignore_errors=True)  # left by an interrupted bench
    for row in wanted:
        started = time.time()
        if row == "teacher":
            run = graft.fit(str(files["data"]), route=route, backbone="mobilenetv2_100", weights=str(MOBILENET), val=files["val"],
                            test=str(files["test"]), out=teacher_dir, quiet=True, overrides=[*common, f"data.image_size={args.teacher_size}"])
        else:
            plan = ["lpft", []] if row == "labels" else ["distill", [f"distill.teacher={teacher_dir}", *args.overrides,
                                                                      *([f"data.unlabeled={files['pool']}"] if files["pool"] else [])]]
            run_dir = work / f"{task}-{row}-s{seed}"
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.rmtree(partial_path(run_dir), ignore_errors=True)
            run = graft.fit(str(files["data"]), route=plan[0], backbone="mobilenetv2_100", weights=str(MOBILENET), val=files["val"],
                            test=str(files["test"]), out=run_dir, quiet=True, overrides=[*common, *student, *plan[1]])
        entry: dict[str, Any] = {"task": task, "row": row, "seed": seed, "setting": settings[row], "test_accuracy": run.metrics["test_accuracy"],
                                 "val_accuracy": run.metrics.get("val_accuracy"), "seconds": round(time.time() - started, 1),
                                 "image_size": run.meta["preprocessing"]["size"], "threads": torch.get_num_threads(),
                                 "min_steps": 0 if args.quick else min_steps_of(route if row == "teacher" else "lpft")}
        if row == "distill":
            teacher = load_run(teacher_dir)  # the gap is measured against the teacher this student learnt from
            info = run.meta["info"]
            entry.update(teacher_accuracy=teacher.metrics["test_accuracy"], teacher_val_accuracy=teacher.metrics.get("val_accuracy"),
                         baseline=labels_setting, pool=pool, overrides=list(args.overrides), teacher_logits=info["teacher_logits"],
                         temperature=info["temperature"], alpha=info["alpha"], transfer_set=info["transfer_set"], sizes=info["sizes"])
        if row != "teacher":
            shutil.rmtree(run.path, ignore_errors=True)
        key = identity(entry)
        add_row(out, entry, lambda r, key=key: identity(r) != key, config={k: v for k, v in vars(args).items() if k != "table"})
        done.add(key)
        print({k: v for k, v in entry.items() if k != "sizes"}, flush=True)


def load_npz_labels(path: Path) -> Any:
    import numpy as np

    with np.load(path) as data:
        return data["labels"]


def identity(row: dict[str, Any]) -> tuple:
    return row["task"], row["row"], row["seed"], row["setting"]


def print_table(results: dict[str, Any]) -> None:
    runs = results["runs"]
    print("test accuracy %: mean ± std over seeds (seconds per run); gap recovered = (b - a) / (teacher - a)\n")
    print("| task | teacher | (a) lpft, labels only | (b) distill, labels + pool | gap recovered per seed | mean | "
          "teacher / student images/s (px) | ratio | (b) setting | seeds |\n|---|" + "---|" * 9)
    validation = []
    for task in dict.fromkeys(r["task"] for r in runs):
        for setting in dict.fromkeys(r["setting"] for r in runs if r["task"] == task and r["row"] == "distill"):
            distilled = sorted((r for r in runs if r["task"] == task and r["setting"] == setting), key=lambda r: r["seed"])
            baseline = {r["seed"]: r for r in runs if r["task"] == task and r["row"] == "labels" and r["setting"] == distilled[0]["baseline"]}
            paired = [r for r in distilled if r["seed"] in baseline]
            gaps = [gap_share(r["teacher_accuracy"], baseline[r["seed"]]["test_accuracy"], r["test_accuracy"]) for r in paired]
            known = [g for g in gaps if g is not None]
            per_seed = ", ".join(f"s{r['seed']} {'-' if g is None else f'{100 * g:.0f} %'}" for r, g in zip(paired, gaps)) or "-"
            teacher_ips = statistics.mean(r["sizes"]["teacher"]["images_per_second"] for r in distilled)
            student_ips = statistics.mean(r["sizes"]["student"]["images_per_second"] for r in distilled)
            sizes = distilled[0]["sizes"]
            print(f"| {task} | {mean_std([r['teacher_accuracy'] for r in distilled])} "
                  f"| {cell([baseline[r['seed']] for r in paired])} | {cell(distilled)} | {per_seed} "
                  f"| {f'{100 * statistics.mean(known):.0f} %' if known else '-'} | {teacher_ips:.0f} ({sizes['teacher']['input_size']}) / "
                  f"{student_ips:.0f} ({sizes['student']['input_size']}) | {student_ips / teacher_ips:.1f}x | {setting} "
                  f"| {','.join(str(r['seed']) for r in distilled)} |")
            validation.append(f"| {task} | {mean_std([r['teacher_val_accuracy'] for r in distilled if r['teacher_val_accuracy'] is not None])} "
                              f"| {mean_std([baseline[r['seed']]['val_accuracy'] for r in paired if baseline[r['seed']]['val_accuracy'] is not None])} "
                              f"| {mean_std([r['val_accuracy'] for r in distilled if r['val_accuracy'] is not None])} | {setting} |")
    if validation:
        print("\nvalidation accuracy % (the split to choose distill.temperature / distill.alpha on; never the test split)\n")
        print("| task | teacher | (a) | (b) | (b) setting |\n|---|---|---|---|---|")
        print("\n".join(validation))
    waiting = [r for r in runs if r["row"] != "distill" and not any(d["task"] == r["task"] and d["row"] == "distill" for d in runs)]
    for task, row in dict.fromkeys((r["task"], r["row"]) for r in waiting):
        print(f"{task} {row}: {cell([r for r in waiting if r['task'] == task and r['row'] == row])} (no distill row yet)")


def cell(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "-"
    return f"{mean_std([r['test_accuracy'] for r in rows])} ({statistics.mean(r['seconds'] for r in rows):.0f} s)"


def gap_share(teacher: float, labels_only: float, distilled: float) -> Optional[float]:
    """(b - a) / (teacher - a); None where the teacher is not ahead of (a), so there is no gap to recover."""
    return None if teacher <= labels_only else (distilled - labels_only) / (teacher - labels_only)


if __name__ == "__main__":
    main()
