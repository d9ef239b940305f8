"""graft against the plain ways, in one process: accuracy over seeds and time as a ratio to the plain probe.

Every method gets the same ImageNet MobileNetV2 weights (../shared), the same input size, the same training
images and the full test split, and runs one after another in this process (one CPU thread with
GRAFT_THREADS=1), so the time ratios compare like with like:

- ``plain-probe``: timm model, eval mode, pooled features, scikit-learn ``LogisticRegression(max_iter=1000)``
  at its default C (the "frozen features + logistic regression" of the project brief's reference points);
- ``naive-sgd``: new head, the whole network trained by SGD (lr 0.01, momentum 0.9, batch 64, no augmentation,
  BatchNorm in train mode) for ``--epochs`` epochs;
- ``fastai``: fastai's ``vision_learner`` (timm arch, fastai's head, ``aug_transforms``, Adam, one-cycle) and
  ``learn.fine_tune(E)`` (fastai's default recipe: one frozen epoch, then E epochs unfrozen), E = ``--epochs``-1;
  needs ``pip install -c constraints.txt -e ".[bench]"`` (the row is skipped without it);
- ``graft-linear``, ``graft-lpft`` and ``graft-finetune``: ``graft.fit`` with graft's defaults (input size and the
  epochs of the gradient stages aside), each with a fresh feature cache, so no run reuses another's features.

    GRAFT_THREADS=1 python bench/baselines.py --tasks cifar10-100 --seeds 0 1 2
    python bench/baselines.py --table
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from common import MOBILENET, SHARED, add_row, mean_std, require_shared, subset_npz

METHODS = ["plain-probe", "naive-sgd", "fastai", "graft-linear", "graft-lpft", "graft-finetune"]
TASKS = ["cifar10-100", "pneumonia"]
BACKBONE = "mobilenetv2_100"


def task_files(task: str, seed: int, folder: Path) -> dict[str, Path]:
    datasets = SHARED / "datasets"
    if task == "cifar10-100":
        return {"train": subset_npz(datasets / "cifar10_train.npz", 100, seed, folder), "test": datasets / "cifar10_test.npz"}
    return {"train": datasets / "pneumoniamnist_train.npz", "val": datasets / "pneumoniamnist_val.npz",
            "test": datasets / "pneumoniamnist_test.npz"}


def tensors(path: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images resized to ``size`` (bilinear) and ImageNet-normalised, the plain way; labels."""
    data = np.load(path)
    x = torch.from_numpy(data["images"]).permute(0, 3, 1, 2).float().div(255)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std, torch.from_numpy(data["labels"]).long()


def timm_model(num_classes: int) -> torch.nn.Module:
    import timm

    return timm.create_model(BACKBONE, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay={"file": str(MOBILENET)})


@torch.no_grad()
def forward_all(model: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def plain_probe(files: dict[str, Path], size: int, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression

    model = timm_model(0).eval()
    (xtr, ytr), (xte, yte) = tensors(files["train"], size), tensors(files["test"], size)
    clf = LogisticRegression(max_iter=1000, random_state=seed).fit(forward_all(model, xtr).numpy(), ytr.numpy())
    return float((clf.predict(forward_all(model, xte).numpy()) == yte.numpy()).mean())


def naive_sgd(files: dict[str, Path], size: int, seed: int, epochs: int) -> float:
    (xtr, ytr), (xte, yte) = tensors(files["train"], size), tensors(files["test"], size)
    torch.manual_seed(seed)
    model = timm_model(int(ytr.max()) + 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xtr)).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            optimizer.step()
    model.eval()
    return float((forward_all(model, xte).argmax(1) == yte).float().mean())


def fastai_fine_tune(files: dict[str, Path], size: int, seed: int, epochs: int) -> float:
    from fastai.vision.all import (CategoryBlock, DataBlock, ImageBlock, IndexSplitter, PILImage, RandomSplitter, Resize,
                                   accuracy, aug_transforms, set_seed, vision_learner)

    set_seed(seed)
    train = np.load(files["train"])
    images, labels = list(train["images"]), list(train["labels"])
    if "val" in files:  # the official validation split as fastai's valid set
        val = np.load(files["val"])
        splitter = IndexSplitter(list(range(len(images), len(images) + len(val["labels"]))))
        images, labels = images + list(val["images"]), labels + list(val["labels"])
    else:
        splitter = RandomSplitter(valid_pct=0.2, seed=seed)  # fastai's default valid share
    items = list(range(len(images)))
    block = DataBlock(blocks=(ImageBlock, CategoryBlock), get_x=lambda i: PILImage.create(images[i]), get_y=lambda i: int(labels[i]),
                      splitter=splitter, item_tfms=Resize(size), batch_tfms=aug_transforms())
    dls = block.dataloaders(items, bs=64, num_workers=0, device=torch.device("cpu"))
    learn = vision_learner(dls, BACKBONE, metrics=accuracy, pretrained_cfg_overlay={"file": str(MOBILENET)})
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(epochs - 1)
    test = np.load(files["test"])
    first = len(images)
    images += list(test["images"])  # get_x reads this list: the test images are indexed after the training ones
    test_dl = dls.test_dl(list(range(first, len(images))), with_labels=False)
    with learn.no_bar():
        probs, _ = learn.get_preds(dl=test_dl)
    return float((probs.argmax(1).numpy() == test["labels"]).mean())


def graft_route(route: str) -> Callable[..., float]:
    def run(files: dict[str, Path], size: int, seed: int, epochs: int, work: Path) -> float:
        import graft

        os.environ["GRAFT_CACHE"] = str(work / f"cache-{route}-{seed}")  # a fresh cache: no reuse of another run's features
        stages = [] if route == "linear" else [f"train.stages=new:1,all:{epochs - 1}"]
        result = graft.fit(str(files["train"]), route=route, backbone=BACKBONE, weights=str(MOBILENET), test=str(files["test"]),
                           val=str(files["val"]) if "val" in files else None, out=work / f"{route}-{seed}", quiet=True,
                           overrides=[f"data.image_size={size}", "data.test_fraction=0", f"runtime.seed={seed}", *stages])
        shutil.rmtree(result.path, ignore_errors=True)
        return float(result.metrics["test_accuracy"])
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=0, help="gradient epochs of naive-sgd, fastai, graft-lpft and graft-finetune "
                        "(0: 10 on cifar10-100, graft's default new:1,all:9; 5 on pneumonia, the reference's 5-epoch fine-tune)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "baselines.json"))
    parser.add_argument("--table", action="store_true", help="only print the table of the results saved in --out")
    args = parser.parse_args()
    out = Path(args.out)
    if args.table:
        print_table(json.loads(out.read_text()))
        return
    require_shared()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import graft  # noqa: F401  (imports happen here, outside every timed run)
    import lightning_fabric  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import timm  # noqa: F401
    try:
        import fastai.vision.all  # noqa: F401
        have_fastai = True
    except ImportError:
        have_fastai = False
    done = {(r["task"], r["method"], r["seed"]) for r in json.loads(out.read_text())["runs"]} if out.exists() else set()
    session = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"  # rows timed in this process; ratios stay within one
    work = Path(tempfile.mkdtemp(prefix="graft-baselines-"))
    for task in args.tasks:
        epochs = args.epochs or (10 if task == "cifar10-100" else 5)
        for seed in args.seeds:
            todo = [m for m in args.methods if (task, m, seed) not in done]
            if todo and "plain-probe" not in todo:
                todo.insert(0, "plain-probe")  # the ratios' denominator is always timed in the same process
            files = task_files(task, seed, work) if todo else {}
            for method in todo:
                if method == "fastai" and not have_fastai:
                    print("fastai is not installed (pip install -c constraints.txt -e \".[bench]\"): row skipped")
                    continue
                call = {"plain-probe": lambda: plain_probe(files, args.image_size, seed),
                        "naive-sgd": lambda: naive_sgd(files, args.image_size, seed, epochs),
                        "fastai": lambda: fastai_fine_tune(files, args.image_size, seed, epochs)}.get(
                    method, lambda: graft_route(method.split("-")[1])(files, args.image_size, seed, epochs, work))
                started = time.time()
                accuracy = call()
                row = {"task": task, "method": method, "seed": seed, "test_accuracy": accuracy, "seconds": round(time.time() - started, 1),
                       "epochs": 0 if "probe" in method or "linear" in method else epochs, "session": session}
                add_row(out, row, config=vars(args))
                print(row, flush=True)
    shutil.rmtree(work, ignore_errors=True)
    print_table(json.loads(out.read_text()))


def print_table(results: dict) -> None:
    """Accuracy (mean ± std over seeds) and mean seconds per method, with the time as a multiple of the plain probe's
    timed in the same process (``session``) for the same seed, then averaged. A method measured more than once for a
    seed counts with its newest row."""
    newest = {(r["task"], r["method"], r["seed"]): r for r in results["runs"]}
    probes = {(r["task"], r["seed"], r.get("session")): r["seconds"] for r in results["runs"] if r["method"] == "plain-probe"}
    print("test accuracy %: mean ± std (seeds; seconds per run; time / plain-probe time in the same process)\n")
    print(f"| task | {' | '.join(METHODS)} |\n|---|" + "---|" * len(METHODS))
    for task in [t for t in TASKS if any(r["task"] == t for r in newest.values())]:
        cells = []
        for method in METHODS:
            picked = [r for (t, m, _), r in newest.items() if t == task and m == method]
            if not picked:
                cells.append("-")
                continue
            seconds = sum(r["seconds"] for r in picked) / len(picked)
            ratios = [r["seconds"] / probes[key] for r in picked if (key := (task, r["seed"], r.get("session"))) in probes]
            ratio = f"; {sum(ratios) / len(ratios):.2f}x" if ratios else ""
            cells.append(f"{mean_std([r['test_accuracy'] for r in picked])} ({len(picked)}; {seconds:.0f} s{ratio})")
        print(f"| {task} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
