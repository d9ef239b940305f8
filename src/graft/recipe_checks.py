"""Value ranges of every recipe key, checked in one place before any folder is created or training starts.

:func:`check_recipe` is called by :meth:`graft.recipe.Recipe.validate` after every load and override, so a
bad value is refused as one line naming the key, the value and the allowed range, never deep inside torch.
:func:`check_devices` asks the machine whether the accelerator and device count it names exist.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from graft.errors import GraftError

Rule = tuple[Callable[[Any], bool], str]

# accepted by Lightning Fabric's precision plugins (lightning_fabric.connector._PRECISION_INPUT)
PRECISIONS = ("64-true", "64", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true",
              "transformer-engine", "transformer-engine-float16")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")  # what graft.data.transforms maps onto torchvision's modes
MAX_IMAGE_SIZE = 4096  # a 100,000-px side asks torch for tens of GB per batch

# augmentation presets (graft.data.transforms builds them) and the stage grammar (graft.train.groups uses it) are
# recipe values: they live here, at the bottom of the layers, so the checks need nothing from above
AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "flip": {"hflip": True},
    "light": {"hflip": True, "crop_scale": 0.5},
    "medium": {"hflip": True, "crop_scale": 0.35, "color": 0.3, "rotate": 10.0},
    "strong": {"hflip": True, "crop_scale": 0.25, "color": 0.4, "rotate": 15.0, "trivial": True},
    "digits": {"translate": 0.1, "rotate": 10.0},  # no flips: they change a digit's identity
}


@dataclass(frozen=True)
class Stage:
    """``train`` is 'new', 'top-K' or 'all'; ``epochs`` how long the stage lasts."""

    train: str
    epochs: int

    def top_groups(self, total: int) -> int:
        if self.train == "new":
            return 0
        if self.train == "all":
            return total
        return min(int(self.train.split("-")[1]), total)


def parse_stages(spec: str) -> list[Stage]:
    """'new:2,top-2:3,all:10' -> [Stage('new', 2), Stage('top-2', 3), Stage('all', 10)]."""
    stages = []
    for part in spec.split(","):
        name, _, epochs = part.strip().partition(":")
        if not re.fullmatch(r"new|all|top-\d+", name) or not epochs.isdigit():
            raise GraftError(f"stage '{part}' must be NAME:EPOCHS with NAME new, top-K or all; e.g. --stages new:1,top-2:2,all:8")
        stages.append(Stage(name, int(epochs)))
    return stages




def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def between(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Rule:
    """A finite number in [low, high] (an open end excludes it)."""
    def test(value: Any) -> bool:
        return _finite(value) and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    return test, f"{'(' if low_open else '['}{_number(low)}, {_number(high)}{')' if high_open else ']'}"


def at_least(low: float, open_: bool = False) -> Rule:
    return (lambda value: _finite(value) and (value > low if open_ else value >= low)), f"{'>' if open_ else '>='} {_number(low)}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def one_of(*names: str) -> Rule:
    return (lambda value: value in names), f"one of {', '.join(names)}"


def optional(rule: Rule) -> Rule:
    test, text = rule
    return (lambda value: value is None or test(value)), f"{text} (or null)"


def each(rule: Rule, non_empty: bool = True) -> Rule:
    test, text = rule
    return (lambda value: (bool(value) or not non_empty) and all(test(v) for v in value)), \
        f"a {'non-empty ' if non_empty else ''}list, each {text}"


FRACTION = between(0, 1, high_open=True)
POSITIVE = at_least(0, open_=True)
COUNT = at_least(1)

RULES: dict[str, Rule] = {
    "data.val_fraction": FRACTION,
    "data.test_fraction": FRACTION,
    "data.image_size": optional(between(8, MAX_IMAGE_SIZE)),
    "data.crop_pct": between(0, 1, low_open=True),
    "data.interpolation": optional(one_of(*INTERPOLATIONS)),
    "data.batch_size": COUNT,
    "data.num_workers": optional(at_least(0)),  # null: chosen from the cores (graft.placement)
    "linear.c_grid": each(POSITIVE),
    "linear.max_iter": COUNT,
    "linear.blas_threads": at_least(0),
    "train.lr": POSITIVE,
    "train.backbone_lr_ratio": at_least(0),
    "train.weight_decay": at_least(0),
    "train.momentum": FRACTION,
    "train.warmup_epochs": at_least(0),
    "train.step_epochs": COUNT,
    "train.step_gamma": between(0, 1, low_open=True),
    "train.label_smoothing": FRACTION,
    "train.min_steps": at_least(0),
    "train.patience": optional(COUNT),
    "train.augment.rotate": optional(between(0, 180)),
    "train.augment.crop_scale": optional(between(0, 1, low_open=True)),
    "train.augment.color": optional(at_least(0)),
    "train.augment.translate": optional(between(0, 1)),
    "train.augment.mixup": at_least(0),
    "train.augment.cutmix": at_least(0),
    "adapt.hidden": COUNT,
    "adapt.dropout": FRACTION,
    "adapt.epochs": COUNT,
    "adapt.batch_size": COUNT,
    "patches.scales": COUNT,
    "patches.max_lambda": at_least(1),
    "patches.overlap": FRACTION,
    "patches.max_windows": COUNT,
    "patches.window_share": between(0, 1, low_open=True),
    "patches.box_share": between(0, 1, low_open=True),
    "patches.background_share": FRACTION,
    "patches.k": POSITIVE,
    "patches.epochs": COUNT,
    "spread.k_grid": each(COUNT),
    "spread.alpha_grid": each(between(0, 1, low_open=True, high_open=True)),
    "spread.gamma": POSITIVE,
    "spread.dims": COUNT,
    "spread.max_pool": COUNT,
    "distill.temperature": POSITIVE,
    "distill.alpha": between(0, 1),
    "pseudo.threshold": optional(between(0, 1)),
    "pseudo.top_k": optional(COUNT),
    "pseudo.alpha_f": at_least(0),
    "pseudo.ramp_start": between(0, 1),
    "pseudo.ramp_end": between(0, 1),
    "pseudo.rounds": COUNT,
    "pseudo.method": one_of("labels", "consistency"),
    "pseudo.consistency_weight": at_least(0),
    "grow.epochs": COUNT,
    "grow.units": optional(COUNT),
    "grow.depth_units": optional(COUNT),
    "grow.gamma": POSITIVE,
    "grow.dropout": FRACTION,
    "grow.lr": POSITIVE,
    "grow.step_epochs": optional(COUNT),
    "grow.lwf": at_least(0),
    "grow.lwf_temperature": POSITIVE,
    "runtime.seed": between(0, 2**32 - 1),  # numpy and Fabric's seed_everything take unsigned 32-bit seeds
    "runtime.accelerator": one_of(*ACCELERATORS),
    "runtime.precision": one_of(*PRECISIONS),
    "runtime.threads": optional(COUNT),
    "exemplar.classes": COUNT,
    "exemplar.copies": COUNT,
    "exemplar.val_copies": at_least(0),
    "exemplar.patch_size": COUNT,
    "exemplar.scales": each(at_least(1)),
    "exemplar.candidates_per_image": COUNT,
    "exemplar.patches_per_image": COUNT,
}


def _lookup(values: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        values = values[part]
    return values


def check_recipe(values: dict[str, Any]) -> None:
    """Raise :class:`GraftError` for the first key of a recipe (as a nested dict) outside its range."""
    for key, (test, allowed) in RULES.items():
        value = _lookup(values, key)
        if not test(value):
            raise GraftError(f"recipe key '{key}' is {value!r}; allowed: {allowed}", key=key)
    data = values["data"]
    if data["val_fraction"] + data["test_fraction"] >= 1:
        raise GraftError(f"data.val_fraction {data['val_fraction']} + data.test_fraction {data['test_fraction']} leave no "
                         "training images; keep their sum below 1", key="data.val_fraction")
    pseudo = values["pseudo"]
    if pseudo["ramp_start"] > pseudo["ramp_end"]:
        raise GraftError(f"pseudo.ramp_start {pseudo['ramp_start']} is after pseudo.ramp_end {pseudo['ramp_end']}; give start <= end",
                         key="pseudo.ramp_start")
    _check_stages(values["train"]["stages"])
    _check_preset(values["train"]["augment"]["preset"])
    _check_devices_text(values["runtime"]["devices"])
    _check_strategy(values["runtime"]["strategy"])


def _check_stages(spec: str) -> None:
    for stage in parse_stages(spec):
        if stage.epochs < 1:  # a stage of 0 epochs would report the untrained model as if trained
            raise GraftError(f"train.stages '{spec}': stage {stage.train} has 0 epochs; give each stage at least 1 (e.g. --stages all:5)",
                             key="train.stages")


def _check_preset(preset: str) -> None:
    if preset not in AUGMENT_PRESETS:
        raise GraftError(f"recipe key 'train.augment.preset' is {preset!r}; allowed: one of {', '.join(AUGMENT_PRESETS)}",
                         key="train.augment.preset")


def _check_strategy(strategy: str) -> None:
    from lightning_fabric.strategies import STRATEGY_REGISTRY

    if strategy != "auto" and strategy not in STRATEGY_REGISTRY:
        raise GraftError(f"recipe key 'runtime.strategy' is {strategy!r}; allowed: auto or one of Fabric's strategies "
                         f"({', '.join(sorted(STRATEGY_REGISTRY)[:6])}, ...)", key="runtime.strategy")


def _check_devices_text(devices: str) -> None:
    if devices == "auto" or re.fullmatch(r"-1|[1-9]\d*|\d+(,\d+)+,?|\d+,", devices):
        return
    raise GraftError(f"recipe key 'runtime.devices' is {devices!r}; allowed: auto, a count >= 1 (or -1: all), or device indices like 0,1",
                     key="runtime.devices")


def check_devices(accelerator: str, devices: str) -> None:
    """Refuse an accelerator this machine does not have, before Lightning Fabric starts."""
    import torch

    wanted: Optional[str] = {"gpu": "cuda", "cuda": "cuda", "mps": "mps"}.get(accelerator)
    if wanted == "cuda" and not torch.cuda.is_available():
        raise GraftError(f"--accelerator {accelerator}: no CUDA GPU is visible on this machine; use --accelerator cpu (or auto)")
    if wanted == "mps" and not torch.backends.mps.is_available():
        raise GraftError("--accelerator mps: Apple's MPS is not available here; use --accelerator cpu (or auto)")
    if accelerator == "tpu":
        raise GraftError("--accelerator tpu: graft is not set up for TPUs; use --accelerator cpu, gpu or auto")
    if wanted == "cuda" and devices.isdigit() and int(devices) > torch.cuda.device_count():
        raise GraftError(f"--devices {devices}: only {torch.cuda.device_count()} GPU(s) visible; give at most that many")
