"""The teacher of distillation and pseudo-labelling, its logits, and model size and speed side by side.

A teacher is a finished graft run (its own preprocessing travels with it) or a timm model whose head
already has the target classes. It is always frozen (eval mode, no gradients).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import timm
import torch
from torch import nn
from torch.nn import functional as F

from graft.console import Reporter
from graft.data.sources import ImageSet
from graft.data.transforms import Preprocessing, resolve_preprocessing
from graft.errors import GraftError
from graft.evaluation import predict_logits
from graft.placement import Placement
from graft.recipe import DataConfig

TEACHER_FORMS = "a graft run directory (or run:PATH) trained on the same classes, or a timm model name whose head has them"


@dataclass
class Teacher:
    model: nn.Module
    preprocessing: Preprocessing
    name: str


def load_teacher(spec: str, classes: list[str]) -> Teacher:
    """Load ``spec`` frozen; refuse (before training) a teacher whose classes differ from the training set's."""
    from graft.runs import load_run

    path = Path(spec[4:] if spec.startswith("run:") else spec)
    if path.is_dir():
        run = load_run(path)
        if run.classes != classes:
            raise GraftError(f"{path}: teacher classes {run.classes} differ from the training classes {classes}; "
                             "give a teacher trained on the same classes")
        model, pre, name = run.model, run.preprocessing, f"{run.meta['backbone']} ({path.name})"
    elif timm.is_model(spec):
        try:
            model = timm.create_model(spec, pretrained=True)
        except Exception as error:  # noqa: BLE001 - hub failures come in many types
            raise GraftError(f"teacher '{spec}': cannot get its weights ({type(error).__name__}); give {TEACHER_FORMS}") from error
        if model.num_classes != len(classes):
            raise GraftError(f"teacher '{spec}' predicts {model.num_classes} classes, the data has {len(classes)}; give {TEACHER_FORMS}")
        pre, name = resolve_preprocessing(timm.data.resolve_model_data_config(model), DataConfig()), spec
    else:
        raise GraftError(f"teacher '{spec}' not found; give {TEACHER_FORMS}")
    model.eval().requires_grad_(False)
    return Teacher(model, pre, name)


def convert_batch(images: torch.Tensor, source: Preprocessing, target: Preprocessing) -> torch.Tensor:
    """A (B, 3, S, S) batch normalised for ``source`` re-expressed for ``target`` (its mean/std and size)."""
    mean, std = (torch.tensor(v, dtype=images.dtype, device=images.device).view(1, 3, 1, 1) for v in (source.mean, source.std))
    pixels = images * std + mean
    if target.size != images.shape[-1]:
        pixels = F.interpolate(pixels, size=(target.size, target.size), mode="bilinear", align_corners=False, antialias=True)
    mean, std = (torch.tensor(v, dtype=images.dtype, device=images.device).view(1, 3, 1, 1) for v in (target.mean, target.std))
    return (pixels - mean) / std


class TeacherLogits:
    """``(images, indices, labelled) -> (B, C)`` teacher logits for :class:`graft.train.semi.SemiStep`.

    Cached: computed once for the labelled and unlabelled sets (eval preprocessing: valid because the student
    sees the same un-augmented images) and looked up by index. Otherwise the teacher runs on each (augmented)
    batch, converted from the student's preprocessing to its own.
    """

    def __init__(self, teacher: Teacher, student_pre: Preprocessing, labelled: Optional[np.ndarray] = None,
                 unlabelled: Optional[np.ndarray] = None, placement: Placement = Placement()) -> None:
        self.teacher, self.student_pre, self.placement = teacher, student_pre, placement
        self.tables = None if labelled is None else (torch.from_numpy(labelled),
                                                     None if unlabelled is None else torch.from_numpy(unlabelled))

    @classmethod
    def cached(cls, teacher: Teacher, student_pre: Preprocessing, train: ImageSet, unlabeled: Optional[ImageSet],
               batch_size: int, reporter: Optional[Reporter] = None, placement: Placement = Placement()) -> "TeacherLogits":
        """Teacher logits of ``train`` and ``unlabeled`` computed once, on ``placement``'s device under its precision."""
        labelled = predict_logits(teacher.model, train, teacher.preprocessing, batch_size, reporter, channels_last=False, placement=placement)
        unlabelled = None if unlabeled is None else predict_logits(teacher.model, unlabeled, teacher.preprocessing, batch_size, reporter,
                                                                   channels_last=False, placement=placement)
        return cls(teacher, student_pre, labelled, unlabelled, placement)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, indices: torch.Tensor, labelled: bool) -> torch.Tensor:
        if self.tables is not None:
            table = self.tables[0 if labelled else 1]
            return table[indices.cpu()].to(images.device)
        self.teacher.model.to(images.device)
        with self.placement.autocast(images.device):  # the run's precision, as the student's forward pass has
            return self.teacher.model(convert_batch(images.float(), self.student_pre, self.teacher.preprocessing)).float()


def model_profile(model: nn.Module, size: int, batch_size: int = 32, batches: int = 3) -> dict[str, Any]:
    """Parameters, MFLOPs of one image at ``size`` px (torch.utils.flop_counter: a multiply-add is 2 FLOPs),
    and inference images/s at ``batch_size`` on this machine's current torch threads (eval mode, no grad)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, size, size, device=device))
        batch = torch.randn(batch_size, 3, size, size, device=device)
        model(batch)  # warm-up
        started = time.perf_counter()
        for _ in range(batches):
            model(batch)
        seconds = time.perf_counter() - started
    model.train(was_training)
    return {"parameters": sum(p.numel() for p in model.parameters()), "mflops": round(counter.get_total_flops() / 1e6, 2),
            "input_size": size, "images_per_second": round(batch_size * batches / seconds, 1)}


def compare_sizes(teacher: dict[str, Any], student: dict[str, Any]) -> dict[str, Any]:
    """Teacher and student profiles side by side, with the student's reductions and speed-up."""
    return {"teacher": teacher, "student": student,
            "parameter_ratio": round(teacher["parameters"] / max(student["parameters"], 1), 2),
            "flop_ratio": round(teacher["mflops"] / max(student["mflops"], 1e-9), 2),
            "speedup": round(student["images_per_second"] / max(teacher["images_per_second"], 1e-9), 2)}
