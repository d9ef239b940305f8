"""The ``graft`` command: each sub-command wraps one public function of :mod:`graft.api`."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Optional, Sequence

from graft.errors import GraftError
from graft.recipe import Recipe
from graft.routes import get_route, route_names
from graft.routes.grow import DEFAULT_GROW_ROUTE

# flag -> recipe key, for `graft fit`
FIT_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--stages": ("train.stages", str, "staged unfreezing, e.g. new:1,top-2:2,all:8"),
    "--lr": ("train.lr", float, "learning rate of the new layers"),
    "--backbone-lr-ratio": ("train.backbone_lr_ratio", float, "backbone lr = lr x ratio (default 0.1)"),
    "--optimizer": ("train.optimizer", str, "adamw or sgd"),
    "--schedule": ("train.schedule", str, "cosine, step or constant"),
    "--bn-mode": ("train.bn_mode", str, "BatchNorm in trained layers: train, frozen (running stats) or eval (stats and affine fixed)"),
    "--patience": ("train.patience", int, "early stopping: epochs without validation gain"),
    "--augment": ("train.augment.preset", str, "none, flip, light, medium, strong or digits"),
    "--mixup": ("train.augment.mixup", float, "MixUp alpha (0: off)"),
    "--cutmix": ("train.augment.cutmix", float, "CutMix alpha (0: off)"),
    "--image-size": ("data.image_size", int, "input side in pixels (default: the backbone's)"),
    "--batch-size": ("data.batch_size", int, "batch size"),
    "--val-fraction": ("data.val_fraction", float, "validation share split off the training data when --val is not given"),
    "--test-fraction": ("data.test_fraction", float, "test share split off when --test is not given"),
    "--train": ("grow.train", str, "grow routes: scenario new, top-1, top-2 or all (Wang et al. 2017)"),
    "--units": ("grow.units", int, "grow routes: S new units (default half the top layer's width)"),
    "--lwf": ("grow.lwf", float, "graft grow: Learning-without-Forgetting weight for earlier tasks (0: off)"),
    "--seed": ("runtime.seed", int, "seed of splits, initialisation and data order"),
    "--devices": ("runtime.devices", str, "Lightning Fabric devices (e.g. 1, 2, auto)"),
    "--accelerator": ("runtime.accelerator", str, "cpu, gpu, auto"),
    "--strategy": ("runtime.strategy", str, "auto or ddp"),
    "--precision": ("runtime.precision", str, "32-true, bf16-mixed, 16-mixed"),
    "--threads": ("runtime.threads", int, "torch CPU threads"),
    "--unlabeled": ("data.unlabeled", str, "unlabelled images (folder or .npz; labels in it are never read) for routes pseudo and distill"),
    "--teacher": ("distill.teacher", str, "teacher run directory (routes distill, pseudo)"),
    "--temperature": ("distill.temperature", float, "distillation temperature T (default 4)"),
    "--kd-alpha": ("distill.alpha", float, "weight of the distillation term (default 0.9)"),
    "--threshold": ("pseudo.threshold", float, "global pseudo-label threshold (default: self-adaptive, the mean confidence; scaled per class)"),
    "--top-k": ("pseudo.top_k", int, "at most this many pseudo-labels per class"),
    "--rounds": ("pseudo.rounds", int, "pseudo-labelling rounds (re-label with the improved model)"),
}

EXAMPLES = {
    "fit": "example:\n  graft fit images/ --route lpft --backbone mobilenetv2_100 --weights mnv2.safetensors --image-size 96\n"
           "  graft fit train.npz --test test.npz --route finetune --backbone tv:resnet18 --stages new:1,top-2:2,all:6\n"
           "  graft fit train.npz --test test.npz --route auto --budget 15m --backbone mobilenetv2_100 --weights mnv2.safetensors\n"
           "  graft fit --resume runs/lpft-mobilenetv2_100-20261123-101500\n"
           "  graft fit train.npz --unlabeled pool.npz --route pseudo --teacher runs/teacher --audit\n"
           "  graft fit train.npz --unlabeled pool/ --route distill --teacher runs/teacher --backbone graft_convnet_m "
           "--no-pretrained --image-size 32 --augment none --with-pseudo",
    "grow": "example:\n  graft fit cifar04.npz --route scratch --backbone graft_alexnet_32 --out runs/source\n"
            "  graft grow runs/source task_a.npz --route grow-width --train all --out runs/a\n"
            "  graft grow runs/a task_b.npz --lwf 1 --out runs/b     # accuracy matrix + forgetting in runs/b/model.json\n"
            "  graft predict runs/b img.png --task task_a",
    "evaluate": "example:\n  graft evaluate runs/lpft-... test.npz --json",
    "predict": "example:\n  graft predict runs/lpft-... cat.jpg dog.png --top-k 3 --format json",
    "export": "example:\n  graft export runs/lpft-... --format onnx\n  graft export runs/lpft-... --format timm --out exported/",
    "demo": "example:\n  graft demo --out runs/demo",
    "pretrain": "example:\n  graft pretrain source.npz --objective supervised --arch graft_convnet_m --epochs 20 --out runs/source\n"
                "  graft pretrain unlabelled/ --objective exemplar --arch exemplar-64c5-64c5-128f --classes 4000 --copies 100\n"
                "  graft pretrain --resume runs/exemplar-exemplar-64c5-64c5-128f-20261123-120000\n"
                "  graft fit target/ --route lpft --backbone run:runs/source",
    "features": "example:\n  graft features runs/exemplar-... train.npz --test test.npz --protocol exemplar",
    "analyze": "example:\n  graft analyze runs/lpft-...                     # the run's own test set\n"
               "  graft analyze runs/lpft-... test.npz --units 3,17 --top-k 12 --embedding tsne",
    "compare": "example:\n  graft compare train.npz --test test.npz --routes linear,lpft,finetune --budget 20m --seeds 3 \\\n"
               "      --backbone mobilenetv2_100 --weights mnv2.safetensors --image-size 96",
    "advise": "example:\n  graft advise train.npz --backbone mobilenetv2_100 --weights mnv2.safetensors --image-size 96\n"
              "  graft advise train.npz --test test.npz --backbone mobilenetv2_100 --weights mnv2.safetensors --compare --budget 20m",
    "scenes": "example:\n  graft scenes ../shared/datasets/cifar10_test.npz scenes/test --count 200 --size 128 --object-size 0.15 0.3 \\\n"
              "      --objects-per-scene 2 4 --background ../shared/datasets/imagenet_sample128.npz --seed 1\n"
              "  graft fit scenes/train --test scenes/test --route patches --backbone mobilenetv2_100 --weights mnv2.safetensors",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graft", description="Transfer learning for small image datasets, every route side by side.")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, epilog=EXAMPLES[name],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)

    fit = command("fit", "Train a classifier on DATA by one route and write a run directory.")
    fit.add_argument("data", nargs="?", help="folder of class sub-folders, CSV (path,label) or .npz (images, labels[, classes])")
    fit.add_argument("--route", help=f"one of {', '.join(route_names())}, or auto: measure, try routes, keep the best on validation "
                                     f"(or their ensemble) (default: {Recipe().route})")
    fit.add_argument("--budget", help="route auto: time budget for measuring and every candidate, e.g. 15m, 90s, 1.5h (default: none)")
    fit.add_argument("--backbone", help="timm name, tv:NAME (torchvision), a graft net, or run:PATH")
    fit.add_argument("--weights", help=".safetensors/.pth state dict or a graft run directory")
    fit.add_argument("--no-pretrained", action="store_true", help="random initial weights")
    fit.add_argument("--val", help="validation DATA (default: split off the training data)")
    fit.add_argument("--test", help="test DATA (default: split off the training data)")
    fit.add_argument("--out", help="run directory (default: runs/ROUTE-BACKBONE-TIME)")
    fit.add_argument("--recipe", help="a recipe YAML (e.g. a run's recipe.yaml) to start from")
    fit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any recipe key, e.g. --set train.weight_decay=0.01")
    fit.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint")
    fit.add_argument("--quiet", action="store_true", help="no progress output")
    fit.add_argument("--audit", action="store_true", help="pseudo-label precision against the hidden labels of an --unlabeled .npz")
    fit.add_argument("--with-pseudo", action="store_true", help="route distill: also train on the teacher's confident pseudo-labels")
    for flag, (key, kind, text) in FIT_FLAGS.items():
        fit.add_argument(flag, type=kind, help=f"{text} [{key}]")
    _add_logger_argument(fit)

    gr = command("grow", "Grow RUN again for the task in DATA (continual growth, Wang et al. 2017), keeping every earlier task's head.")
    gr.add_argument("run", help="a finished run: a source run (`graft fit`) or an earlier `graft grow` step")
    gr.add_argument("data", help="the new task's DATA")
    growers = [name for name in route_names() if get_route(name).grows]
    gr.add_argument("--route", help=f"one of {', '.join(growers)} (default: RUN's grow route, else {DEFAULT_GROW_ROUTE})")
    gr.add_argument("--val", help="validation DATA (default: split off the training data)")
    gr.add_argument("--test", help="test DATA (default: split off the training data)")
    gr.add_argument("--out", help="run directory")
    gr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any recipe key, e.g. --set grow.gamma=20")
    gr.add_argument("--quiet", action="store_true")
    for flag, (key, kind, text) in FIT_FLAGS.items():
        gr.add_argument(flag, type=kind, help=f"{text} [{key}]")
    _add_logger_argument(gr)

    ev = command("evaluate", "Accuracy, per-class accuracy and a confusion matrix of RUN on labelled DATA.")
    ev.add_argument("run")
    ev.add_argument("data")
    ev.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ev.add_argument("--out", help="folder for confusion.png and evaluation.json (default RUN/evaluations/NAME)")
    ev.add_argument("--task", help="a grown run's task (name or index) that answers; default: its latest task")
    _add_device_arguments(ev)
    _add_tta_argument(ev)

    pr = command("predict", "Top-k classes of images with a trained RUN.")
    pr.add_argument("run")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--top-k", type=int, default=5)
    pr.add_argument("--format", choices=["csv", "json"], default="csv")
    pr.add_argument("--task", help="a grown run's task (name or index) that answers; default: its latest task")
    _add_device_arguments(pr)
    _add_tta_argument(pr)

    ex = command("export", "Export RUN to ONNX, TorchScript or a folder plain timm loads, and check its outputs against PyTorch.")
    ex.add_argument("run")
    ex.add_argument("--format", choices=["onnx", "torchscript", "timm"], default="onnx",
                    help="timm: model.safetensors + config.json for timm.create_model('local-dir:FOLDER', pretrained=True)")
    ex.add_argument("--out", help="output file, or folder for timm (default inside RUN)")
    ex.add_argument("--atol", type=float, default=1e-4)

    pre = command("pretrain", "Train a backbone on a labelled source DATA (supervised) or unlabelled IMAGES (Exemplar-CNN); "
                              "transfer it with --backbone run:PATH.")
    pre.add_argument("data", nargs="?", help="DATA as for fit (supervised), or IMAGES (exemplar: folder or .npz; labels ignored)")
    pre.add_argument("--objective", choices=["supervised", "exemplar"], default="supervised")
    pre.add_argument("--arch", help="backbone to train: exemplar-64c5-64c5-128f, exemplar-64c5-128c5-256c5-512f, "
                                    "exemplar-92c5-256c5-512c5-1024f, graft_convnet_m, any timm name ...")
    pre.add_argument("--epochs", type=int, help="training epochs [train.stages=all:EPOCHS]")
    pre.add_argument("--classes", type=int, help="exemplar: surrogate classes N [exemplar.classes]")
    pre.add_argument("--copies", type=int, help="exemplar: transformed copies K per class [exemplar.copies]")
    pre.add_argument("--patch-size", type=int, help="exemplar: seed patch side in pixels [exemplar.patch_size]")
    pre.add_argument("--out", help="run directory (default: runs/ROUTE-ARCH-TIME)")
    pre.add_argument("--recipe", help="a recipe YAML to start from")
    pre.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any recipe key, e.g. --set exemplar.transforms=[translate,scale]")
    pre.add_argument("--resume", metavar="RUN", help="continue an interrupted pretraining from its last checkpoint")
    pre.add_argument("--quiet", action="store_true")
    for flag, (key, kind, text) in _pretrain_flags().items():
        pre.add_argument(flag, type=kind, help=f"{text} [{key}]")

    fe = command("features", "Frozen-feature evaluation of RUN's backbone on labelled DATA: features + linear SVM (C chosen on validation).")
    fe.add_argument("run")
    fe.add_argument("data", help="labelled DATA (train + validation; test too unless --test)")
    fe.add_argument("--test", help="test DATA (default: a seeded stratified share of DATA)")
    fe.add_argument("--protocol", choices=["exemplar", "linear"], default="exemplar",
                    help="exemplar: every layer max-pooled over 4 quadrants (Dosovitskiy et al. 2014); linear: pooled pre-logits")
    fe.add_argument("--val-fraction", type=float, default=0.15)
    fe.add_argument("--test-fraction", type=float, default=0.2)
    fe.add_argument("--seed", type=int, default=0)
    fe.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    _add_device_arguments(fe)

    demo = command("demo", "The whole story on scikit-learn's digits: source task 0-4, transfer to 5-9 with 5 labels per class.")
    demo.add_argument("--out", help="demo directory (default runs/demo-TIME)")
    demo.add_argument("--quiet", action="store_true")
    sc = command("scenes", "Build a multi-object benchmark (VOC XML + COCO JSON) by pasting objects of a single-label DATA onto backgrounds.")
    sc.add_argument("objects", help="single-label DATA whose images are the objects (folder, CSV or .npz)")
    sc.add_argument("out", help="output folder (JPEGImages/, Annotations/, classes.txt, annotations.json)")
    sc.add_argument("--count", type=int, default=200, help="number of scenes")
    sc.add_argument("--size", type=int, default=128, help="scene side in pixels")
    sc.add_argument("--object-size", type=float, nargs=2, default=[0.5, 0.9], metavar=("MIN", "MAX"),
                    help="object side as a fraction of the scene side (default 0.5 0.9)")
    sc.add_argument("--objects-per-scene", type=int, nargs=2, default=[1, 3], metavar=("MIN", "MAX"))
    sc.add_argument("--background", default="texture", help="'texture' (generated) or DATA of photographs to crop")
    sc.add_argument("--seed", type=int, default=0)
    an = command("analyze", "Embeddings before/after transfer, top-k images of units, per-layer weight change, "
                            "confusion, per-class accuracy and curves of RUN, as PNGs and one self-contained report.html.")
    an.add_argument("run")
    an.add_argument("data", nargs="?", help="labelled DATA to analyse (default: the run's test set)")
    an.add_argument("--out", help="output folder (default RUN/analysis)")
    an.add_argument("--units", help="comma-separated units of the top representation layer (default: the most changed)")
    an.add_argument("--count", type=int, default=4, help="how many units when --units is not given (default 4)")
    an.add_argument("--top-k", type=int, default=8, help="images per unit (default 8)")
    an.add_argument("--max-images", type=int, default=600, help="images embedded and searched, class-balanced (default 600)")
    an.add_argument("--embedding", choices=["auto", "tsne", "umap"], default="auto", help="auto: UMAP when installed, else t-SNE")
    an.add_argument("--seed", type=int, default=0)
    an.add_argument("--quiet", action="store_true")
    _add_device_arguments(an)

    co = command("compare", "Run several routes on the same split under a time budget, cheapest first, and print a leaderboard.")
    _add_compare_arguments(co)
    co.add_argument("--routes", help="comma-separated routes (default: every registered route suited to single-label DATA)")
    co.add_argument("--seeds", type=int, default=1, help="seeds per route (default 1)")

    ad = command("advise", "Measure labelled images per class and closeness to the backbone's source, and recommend a route "
                           "from the size x similarity matrix.")
    _add_compare_arguments(ad)
    ad.add_argument("--seed", type=int, default=0, help="seed of the small measuring split (the advice is stable for a seed)")
    ad.add_argument("--per-class", type=int, default=100, help="images per class in the measuring split (default 100)")
    ad.add_argument("--json", action="store_true", help="print the advice as one JSON object")
    ad.add_argument("--compare", action="store_true", help="then run the top candidates with `graft compare`")
    ad.add_argument("--top", type=int, default=3, help="how many candidates --compare runs (default 3)")
    ad.add_argument("--seeds", type=int, default=1, help="seeds per route for --compare (default 1)")
    return parser


def _add_logger_argument(parser: argparse.ArgumentParser) -> None:
    from graft.loggers import LOGGERS

    parser.add_argument("--logger", action="append", choices=LOGGERS,
                        help="experiment logger, repeatable: csv and tensorboard write RUN/logs/, mlflow its tracking URI [runtime.loggers]")


def _logger_overrides(args: argparse.Namespace) -> list[str]:
    return [f"runtime.loggers={json.dumps(args.logger)}"] if args.logger else []


def _add_tta_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tta", choices=["none", "flip"], help="test-time augmentation: flip averages the probabilities of each image "
                                                           "and its mirror image (default: what the run recorded; route auto records it)")


def _add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """Where a command's forward passes run (the run lifecycle's device and precision)."""
    parser.add_argument("--precision", help="forward passes under this precision, e.g. 32-true, bf16-mixed, 16-mixed (default: the run's)")
    parser.add_argument("--accelerator", help="cpu, gpu, mps or auto (default: auto, the best present)")


def _add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments `graft compare` and `graft advise --compare` share."""
    parser.add_argument("data", help="labelled DATA (folder, CSV or .npz)")
    parser.add_argument("--backbone", help="timm name, tv:NAME, a graft net or run:PATH")
    parser.add_argument("--weights", help=".safetensors/.pth state dict or a graft run directory")
    parser.add_argument("--val", help="validation DATA (default: split off the training data)")
    parser.add_argument("--test", help="test DATA (default: split off the training data)")
    parser.add_argument("--budget", help="time budget for all runs, e.g. 20m, 90s, 1.5h (default: none)")
    parser.add_argument("--image-size", type=int, help="input side in pixels [data.image_size]")
    parser.add_argument("--precision", help="every forward pass and training step under this precision, e.g. bf16-mixed [runtime.precision]")
    parser.add_argument("--accelerator", help="cpu, gpu, mps or auto [runtime.accelerator]")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any recipe key, for every run")
    parser.add_argument("--out", help="comparison folder (default runs/compare-TIME)")
    parser.add_argument("--quiet", action="store_true")


def _compare_overrides(args: argparse.Namespace) -> list[str]:
    given = {"data.image_size": args.image_size, "runtime.precision": args.precision, "runtime.accelerator": args.accelerator}
    return [f"{key}={json.dumps(value)}" for key, value in given.items() if value is not None] + args.set


def _compare(args: argparse.Namespace) -> None:
    from graft.comparison import compare, print_leaderboard

    routes = [r.strip() for r in args.routes.split(",") if r.strip()] if args.routes else None
    comparison = compare(args.data, routes, args.backbone, args.weights, val=args.val, test=args.test, seeds=args.seeds,
                         budget=args.budget, out=args.out, overrides=_compare_overrides(args), quiet=args.quiet)
    print_leaderboard(comparison)
    print(f"report: {comparison.report}")


def _analyze(args: argparse.Namespace) -> None:
    from graft.api import analyze

    units = [int(u) for u in args.units.split(",")] if args.units else None
    result = analyze(args.run, args.data, args.out, units, args.count, args.top_k, args.max_images, args.embedding, args.seed, args.quiet,
                     precision=args.precision, accelerator=args.accelerator)
    print(result.report)


def _advise(args: argparse.Namespace) -> None:
    from graft.advice import advise

    advice = advise(args.data, args.backbone, args.weights, val=args.val, per_class=args.per_class, seed=args.seed,
                    overrides=_compare_overrides(args), quiet=args.quiet)
    if args.json:
        print(json.dumps(advice.to_dict()))
    else:
        from rich.console import Console

        console = Console()
        console.print(f"[bold]{advice.size} + {advice.similarity}[/]: try {', '.join(advice.routes)} (in this order)")
        console.print(f"measured: {advice.measured}")
        console.print(f"why: {advice.reason}")
    if args.compare:
        from graft.comparison import compare, print_leaderboard

        comparison = compare(args.data, advice.routes[: args.top], args.backbone, args.weights, val=args.val, test=args.test,
                             seeds=args.seeds, budget=args.budget, out=args.out, overrides=_compare_overrides(args), quiet=args.quiet)
        print_leaderboard(comparison)
        print(f"report: {comparison.report}")


def _scenes(args: argparse.Namespace) -> None:
    from graft.api import scenes

    summary = scenes(args.objects, args.out, args.count, args.size, tuple(args.object_size), tuple(args.objects_per_scene),
                     args.background, args.seed)
    print(f"{args.out}: {summary['scenes']} scenes with {summary['objects']} objects of {len(summary['classes'])} classes")


def _fit(args: argparse.Namespace) -> None:
    from graft.api import fit

    given = {key: getattr(args, flag[2:].replace("-", "_")) for flag, (key, _, _) in FIT_FLAGS.items()}
    overrides = [f"{key}={json.dumps(value)}" for key, value in given.items() if value is not None]
    if args.no_pretrained:
        overrides.append("model.pretrained=false")
    overrides += ["pseudo.audit=true"] * args.audit + ["distill.with_pseudo=true"] * args.with_pseudo
    overrides += _logger_overrides(args) + args.set
    if args.resume:
        if args.budget:
            raise GraftError("--budget: a resumed run keeps its own settings; leave --budget out with --resume")
        run = fit(resume=args.resume, overrides=overrides, quiet=args.quiet)
    else:
        if not args.data:
            raise GraftError("give DATA (or --resume RUN); see `graft fit --help`")
        recipe = Recipe.from_yaml(args.recipe) if args.recipe else None
        run = fit(args.data, route=args.route, backbone=args.backbone, weights=args.weights, val=args.val, test=args.test,
                  out=args.out, recipe=recipe, overrides=overrides, quiet=args.quiet, budget=args.budget)
    print(run.path)


def _grow(args: argparse.Namespace) -> None:
    from graft.api import grow

    given = {key: getattr(args, flag[2:].replace("-", "_")) for flag, (key, _, _) in FIT_FLAGS.items()}
    overrides = [f"{key}={json.dumps(value)}" for key, value in given.items() if value is not None] + _logger_overrides(args) + args.set
    run = grow(args.run, args.data, route=args.route, val=args.val, test=args.test, out=args.out, overrides=overrides, quiet=args.quiet)
    info = run.meta["info"]
    names = [t["name"] for t in info["tasks"]]
    print("accuracy matrix (row: after step, column: task " + ", ".join(names) + ")")
    for name, row in zip(names, info["accuracy_matrix"]):
        print(f"  {name}: " + "  ".join("   -  " if v is None else f"{v:.4f}" for v in row))
    print("forgetting: " + ", ".join(f"{n} {'-' if f is None else f'{f:+.4f}'}" for n, f in zip(names, info["forgetting"])))
    print(run.path)


def _evaluate(args: argparse.Namespace) -> None:
    from graft.api import evaluate

    evaluation = evaluate(args.run, args.data, out=args.out, task=args.task, precision=args.precision, accelerator=args.accelerator,
                          tta=args.tta)
    if args.json:
        print(json.dumps(evaluation.to_dict()))
        return
    from rich.console import Console
    from rich.table import Table

    multilabel = hasattr(evaluation, "per_class_ap")  # several labels per image: per-class AP and mAP
    metric, overall, per_class = ("AP", f"mAP {evaluation.mean_ap:.4f}", evaluation.per_class_ap) if multilabel else \
        ("accuracy", f"accuracy {evaluation.accuracy:.4f}", evaluation.per_class)
    table = Table(title=f"{args.run} on {args.data}: {overall} ({evaluation.count} images)")
    table.add_column("class")
    table.add_column(metric, justify="right")
    for name, value in per_class.items():
        table.add_row(name, f"{value:.4f}")
    Console().print(table)
    if multilabel:
        return
    print(f"confusion matrix: {evaluation.extra['confusion_png']}")


def _predict(args: argparse.Namespace) -> None:
    from graft.api import predict

    if args.top_k < 1:
        raise GraftError(f"--top-k {args.top_k}: give how many classes to list, 1 or more")
    results = predict(args.run, args.images, top_k=args.top_k, task=args.task, precision=args.precision, accelerator=args.accelerator,
                      tta=args.tta)
    if args.format == "json":
        print(json.dumps(results))
        return
    print("image,rank,class,probability")
    for result in results:
        for rank, top in enumerate(result["top"], start=1):
            print(f"{result['image']},{rank},{top['class']},{top['probability']:.6f}")


def _export(args: argparse.Namespace) -> None:
    from graft.api import export

    result = export(args.run, args.format, args.out, args.atol)
    verdict = "match" if result["matches"] else "DO NOT match"
    print(f"{result['path']}: outputs {verdict} PyTorch's (max abs difference {result['max_abs_difference']:.2e}, tolerance {result['atol']:.0e})")
    if not result["matches"]:
        raise SystemExit(1)


def _pretrain_flags() -> dict[str, tuple[str, Any, str]]:
    """The flags of `graft fit` that mean something to pretraining (training, data, runtime; stages via --epochs)."""
    return {flag: spec for flag, spec in FIT_FLAGS.items()
            if spec[0].split(".")[0] in ("train", "data", "runtime") and spec[0] not in ("train.stages", "data.unlabeled")}


def _pretrain(args: argparse.Namespace) -> None:
    from graft.pretraining import pretrain

    given = {key: getattr(args, flag[2:].replace("-", "_")) for flag, (key, _, _) in _pretrain_flags().items()}
    given.update({"train.stages": None if args.epochs is None else f"all:{args.epochs}", "exemplar.classes": args.classes,
                  "exemplar.copies": args.copies, "exemplar.patch_size": args.patch_size})
    overrides = [f"{key}={json.dumps(value)}" for key, value in given.items() if value is not None] + args.set
    if args.resume:
        run = pretrain(resume=args.resume, overrides=overrides, quiet=args.quiet)
    else:
        if not args.data:
            raise GraftError("give DATA or IMAGES (or --resume RUN); see `graft pretrain --help`")
        recipe = Recipe.from_yaml(args.recipe) if args.recipe else None
        run = pretrain(args.data, args.objective, args.arch, out=args.out, recipe=recipe, overrides=overrides, quiet=args.quiet)
    print(run.path)


def _features(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from graft.protocols import evaluate_features

    result = evaluate_features(args.run, args.data, args.protocol, test=args.test, val_fraction=args.val_fraction,
                      test_fraction=args.test_fraction, seed=args.seed, precision=args.precision, accelerator=args.accelerator)
    if args.json:
        print(json.dumps(asdict(result)))
        return
    print(f"{args.protocol} protocol: test accuracy {result.accuracy:.4f} on {result.test_count} images "
          f"({result.dimensions} features, linear SVM C={result.c:g} chosen on {result.val_count} validation images)")


def _demo(args: argparse.Namespace) -> None:
    from graft.demonstration import demo

    demo(out=args.out, quiet=args.quiet)


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "fit": _fit, "grow": _grow, "evaluate": _evaluate, "predict": _predict, "export": _export, "demo": _demo, "pretrain": _pretrain, "features": _features, "scenes": _scenes,
    "analyze": _analyze, "compare": _compare, "advise": _advise}


def _flag_hint(error: GraftError, argv: Optional[Sequence[str]]) -> str:
    """' (flag --lr)' when the error is about a recipe key that has a flag, so the line names what the user typed."""
    flag = next((flag for flag, (key, _, _) in FIT_FLAGS.items() if key == error.key), None)
    if error.key is None:
        return ""
    given = list(sys.argv[1:] if argv is None else argv)
    if flag and any(word == flag or word.startswith(flag + "=") for word in given):
        return f" (flag {flag})"
    return f" (--set {error.key}=VALUE)"


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = _parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except GraftError as error:
        print(f"graft: error: {error}{_flag_hint(error, argv)}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
