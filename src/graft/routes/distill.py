"""Route ``distill``: a (usually smaller) student learns from a teacher's soft targets (DESIGN.md route 9).

Hinton, Vinyals & Dean 2015: loss α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1−α)·CE(s, y). The transfer set
is the labelled images plus the ``--unlabeled`` ones, which get the KL term only. With
``distill.with_pseudo`` the teacher's confident labels of the unlabelled images are trained on as well,
weighted by α(t) as in route ``pseudo`` (the two compose). The run reports teacher and student size and
inference speed side by side.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch

from graft.data.transforms import augment_options
from graft.data.unlabeled import hidden_labels
from graft.errors import GraftError
from graft.evaluation import predict_logits
from graft.routes.registry import register_route
from graft.routes.context import Context, RouteResult
from graft.routes.pseudo import choose, train_student, with_labels
from graft.teacher import TeacherLogits, compare_sizes, load_teacher, model_profile
from graft.train.semi import SemiStep, pseudo_weight


def augmentation_off(context: Context) -> bool:
    augment = context.recipe.train.augment
    return not augment_options(augment) and augment.mixup == 0 and augment.cutmix == 0


@register_route("distill", unlabeled=True)
def distill(context: Context) -> RouteResult:
    config = context.recipe.distill
    if not config.teacher:
        raise GraftError("route distill needs a teacher; pass --teacher RUN_DIR (a graft run on the same classes)")
    if not 0 <= config.alpha <= 1 or config.temperature <= 0:
        raise GraftError(f"distill.alpha={config.alpha}, distill.temperature={config.temperature}: need 0 <= alpha <= 1 and T > 0")
    teacher = load_teacher(config.teacher, context.train.classes)
    unlabeled = context.unlabeled
    student_pre = context.preprocessing(context.model())
    cached = config.cache and augmentation_off(context)
    batch = context.recipe.data.batch_size * 2
    targets = (TeacherLogits.cached(teacher, student_pre, context.train, unlabeled, batch, context.reporter, context.placement) if cached
               else TeacherLogits(teacher, student_pre, placement=context.placement))
    info: dict[str, Any] = {"teacher": teacher.name, "teacher_logits": "cached once" if cached else "computed per batch",
                            "temperature": config.temperature, "alpha": config.alpha,
                            "transfer_set": {"labelled": len(context.train), "unlabelled": 0 if unlabeled is None else len(unlabeled)}}
    weight = None
    if config.with_pseudo:
        if unlabeled is None:
            raise GraftError("distill.with_pseudo needs unlabelled images; pass --unlabeled DIR_OR_NPZ")
        pseudo = context.recipe.pseudo
        logits = targets.tables[1] if targets.tables is not None else torch.from_numpy(
            predict_logits(teacher.model, unlabeled, teacher.preprocessing, batch, context.reporter, channels_last=False,
                           placement=context.placement))
        hidden = hidden_labels(context.recipe.data.unlabeled, context.train.classes) if pseudo.audit else None
        indices, labels, record = choose(torch.softmax(logits.float(), 1).numpy(), pseudo, context.train.classes, hidden)
        full = np.full(len(unlabeled), -1, np.int64)
        full[indices] = labels
        unlabeled = with_labels(unlabeled, full)  # every image keeps its KL term; chosen ones add α(t)·CE
        weight = partial(pseudo_weight, alpha_f=pseudo.alpha_f, start=pseudo.ramp_start, end=pseudo.ramp_end)
        info["rounds"] = [{**record, "round": 1}]
        context.run.log(event="pseudo_labels", round=1, **record)
        context.reporter.print(f"teacher pseudo-labels: {record['selected']} of {record['of']} {record['per_class']}"
                               + (f", precision {record['precision']}" if "precision" in record else ""))
    step = SemiStep(targets, config.alpha, config.temperature, weight)
    model, history, start = train_student(context, unlabeled, step)
    info.update(start)
    info["sizes"] = compare_sizes(model_profile(teacher.model, teacher.preprocessing.size), model_profile(model, student_pre.size))
    report_sizes(context, info["sizes"])
    return RouteResult(model, info, history)


def report_sizes(context: Context, sizes: dict[str, Any]) -> None:
    context.run.log(event="sizes", **sizes)
    for role in ("teacher", "student"):
        p = sizes[role]
        context.reporter.print(f"{role}: {p['parameters']:,} parameters, {p['mflops']:.1f} MFLOPs at {p['input_size']} px, "
                               f"{p['images_per_second']:.0f} images/s")
    context.reporter.print(f"student: {sizes['parameter_ratio']}x fewer parameters, {sizes['flop_ratio']}x fewer FLOPs, "
                           f"{sizes['speedup']}x faster")
