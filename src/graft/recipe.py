"""One config object for every route: a Recipe of nested dataclasses.

YAML is its serialisation; overrides (``section.key=value``) are type-checked against
the dataclass annotations and unknown keys are errors, as in DESIGN.md §3.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from graft.errors import GraftError


@dataclass
class DataConfig:
    """Where the images come from and how they are split and preprocessed."""

    train: Optional[str] = None
    val: Optional[str] = None
    test: Optional[str] = None
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    image_size: Optional[int] = None  # None: the backbone's own input size
    crop_pct: float = 1.0  # 1.0 keeps the whole (square-cropped) image; timm's ImageNet default is 0.875
    interpolation: Optional[str] = "bilinear"  # None: the backbone's own (timm often says bicubic)
    batch_size: int = 64
    num_workers: Optional[int] = None  # loader worker processes; None: 0 for in-memory arrays, else min(cores - 1, 8) (graft.placement)
    unlabeled: Optional[str] = None  # folder of images or .npz; labels in it are never read (routes pseudo, distill)
    # True: the test share is still split off (train and val are the images a full run gets) but left out of the run:
    # never evaluated (route auto fits its candidates so, and evaluates the test split once, with the winner)
    hold_out_test: bool = False


@dataclass
class ModelConfig:
    """Backbone name (timm name, ``tv:NAME`` or a graft net) and its weights."""

    backbone: str = "resnet18"
    weights: Optional[str] = None  # .safetensors/.pth file, or a graft run directory
    pretrained: bool = True  # use the hub (or --weights); False: random init
    channels_last: bool = True  # about 2x faster convolutions on CPU
    # a new head on pretrained weights starts at zero (zeros | small: truncated normal std 0.01 | library: the library's
    # own init); see graft.backbones.factory.init_new_classifier
    head_init: str = "zeros"


@dataclass
class LinearConfig:
    """Linear probe: multinomial logistic regression on frozen features (DESIGN.md route 1)."""

    c_grid: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 1e-1])  # on standardised features
    max_iter: int = 300
    cache: bool = True
    blas_threads: int = 1  # BLAS threads for the solves (0: the library's default); see graft.probe
    # route linear: True chooses C by cross-validation over train + val and fits on both; False chooses C on val and
    # keeps val unseen, so its validation accuracy is honest (route auto compares candidates so)
    pool_validation: bool = True


@dataclass
class AugmentConfig:
    """Augmentation: a named preset plus explicit options (torchvision.transforms.v2)."""

    preset: str = "light"  # none | flip | light | medium | strong
    hflip: Optional[bool] = None
    rotate: Optional[float] = None  # degrees
    crop_scale: Optional[float] = None  # min scale of RandomResizedCrop
    color: Optional[float] = None  # brightness/contrast/saturation jitter
    translate: Optional[float] = None  # affine translation fraction
    mixup: float = 0.0  # alpha; 0 disables
    cutmix: float = 0.0  # alpha; 0 disables


@dataclass
class TrainConfig:
    """Gradient training of backbone and head (fine-tune, LP-FT, scratch)."""

    stages: str = "new:1,all:9"  # staged unfreezing: new | top-K | all, each with its epochs
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3  # learning rate of the new layers
    backbone_lr_ratio: float = 0.1  # backbone lr = lr * ratio (new layers 10x by default)
    weight_decay: float = 0.05
    momentum: float = 0.9
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = 0.5
    step_epochs: int = 30
    step_gamma: float = 0.1
    bn_mode: Literal["train", "frozen", "eval"] = "frozen"
    label_smoothing: float = 0.1
    min_steps: int = 400  # every stage's epochs are multiplied by one factor until the schedule has this many optimizer steps; 0: epochs as given
    patience: Optional[int] = None  # early stopping after this many epochs without validation gain; the best epoch is always restored
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class AdaptConfig:
    """Adaptation layers FCa (ReLU, dropout) and FCb on a frozen representation (Oquab et al. 2014; DESIGN.md route 4).

    Optimizer, lr, weight decay, schedule and label smoothing come from ``train``.
    """

    hidden: int = 2048  # FCa units, as in the paper
    dropout: float = 0.5  # after FCa's ReLU, as in the paper
    epochs: int = 30  # over cached features an epoch takes milliseconds
    batch_size: int = 128
    augment: bool = False  # True: train through images with train.augment (slow); False: on cached features


@dataclass
class PatchesConfig:
    """Multi-scale windows with a background class (Oquab et al. 2014 sec. 3.3; DESIGN.md route 5)."""

    scales: int = 8  # window sides min(w,h)/lambda, lambda spaced geometrically from 1 to max_lambda
    max_lambda: float = 4.0
    overlap: float = 0.5  # neighbouring windows of one scale overlap at least this much
    max_windows: int = 500  # per image; the finest scales are thinned evenly when the grid gives more
    window_share: float = 0.2  # object o labels a window when o's box covers >= 20% of the window ...
    box_share: float = 0.6  # ... and the window holds >= 60% of o's box
    background_share: float = 0.1  # effective share of background windows in training
    reweight: Literal["loss", "sampling", "none"] = "loss"  # how background is brought to background_share
    k: float = 5.0  # test-time score(C) = mean_i p(C|P_i)^k
    finetune: bool = False  # False: frozen representation, cached window features; True: the train.stages loop on windows
    epochs: int = 20  # head epochs on cached window features


@dataclass
class SpreadConfig:
    """Label spreading on frozen features (Zhou et al. 2004, as Iscen et al. 2019): route ``spread``."""

    k_grid: list[int] = field(default_factory=lambda: [10, 30])  # neighbours per image tried, chosen on validation
    alpha_grid: list[float] = field(default_factory=lambda: [0.8, 0.9, 0.95])  # spreading strength α tried, chosen on validation
    gamma: float = 3.0  # affinity = cosine similarity ** gamma (Iscen et al.: 3)
    dims: int = 256  # principal directions kept for the k-NN search
    max_pool: int = 100_000  # at most this many unlabelled images (a seeded sample): the exact k-NN search costs N^2


@dataclass
class DistillConfig:
    """Knowledge distillation (Hinton et al. 2015; DESIGN.md route 9)."""

    teacher: Optional[str] = None  # a graft run directory (or run:PATH), or a timm model whose head has the target classes
    temperature: float = 4.0  # T of softmax(z/T)
    alpha: float = 0.9  # weight of the T²-scaled KL term; 1 - alpha goes to cross-entropy on the labels
    cache: bool = True  # teacher logits computed once (only when augmentation is off; else per batch)
    with_pseudo: bool = False  # also train on the teacher's confident pseudo-labels of the unlabelled images (section pseudo)


@dataclass
class PseudoConfig:
    """Pseudo-labelling (Lee 2013; DESIGN.md route 10)."""

    threshold: Optional[float] = None  # global threshold τ; None: self-adaptive, the pool's mean top probability (FreeMatch); 0: every image (Lee)
    per_class: bool = True  # scale τ per class by how confidently the model predicts the class (FreeMatch/FlexMatch)
    top_k: Optional[int] = None  # at most this many per class, the most confident first
    balance: bool = False  # every class keeps as many as the class with the fewest candidates
    alpha_f: float = 3.0  # final weight of the pseudo-label loss (Lee: 3)
    ramp_start: float = 0.1  # T1 as a fraction of training: weight 0 before
    ramp_end: float = 0.6  # T2 as a fraction of training: weight alpha_f from here on
    method: str = "labels"  # labels: a labeller picks pseudo-labels once per round (Lee); consistency: FixMatch's weak/strong views, every batch
    consistency_weight: float = 1.0  # λ_u of the consistency loss (FixMatch: 1)
    rounds: int = 1  # re-label with the improved model and train again this many times
    audit: bool = False  # measure pseudo-label precision against the .npz's hidden labels (read only then)


@dataclass
class ExemplarConfig:
    """Exemplar-CNN surrogate task (Dosovitskiy et al. 2014; DESIGN.md route 7): seed patches and their transformations.

    Ranges are the paper's (sec. 3). Multiplicative factors are drawn log-uniformly, additive ones uniformly.
    """

    classes: int = 4000  # N surrogate classes = seed patches (the paper uses thousands; accuracy grows with N)
    copies: int = 100  # K transformed copies per class per epoch (paper: ~100), made on the fly from (seed, class, copy)
    val_copies: int = 1  # extra copies per class (never trained on) for the surrogate validation accuracy
    patch_size: int = 32  # seed patch side in pixels (paper: 32)
    scales: list[float] = field(default_factory=lambda: [1.0, 1.5, 2.0])  # window side / patch_size, clipped to the image
    candidates_per_image: int = 8  # random windows per image among which patches are drawn by gradient energy
    patches_per_image: int = 1  # the paper draws its seed patches from different images
    upscale_small: bool = False  # False: images smaller than patch_size are an error; True: their windows are upscaled
    transforms: list[str] = field(default_factory=lambda: ["translate", "scale", "rotate", "contrast", "color", "hue"])
    translate: float = 0.2  # fraction of the patch side, each direction
    scale: list[float] = field(default_factory=lambda: [0.7, 1.4])
    rotate: float = 20.0  # degrees, each way
    contrast: list[float] = field(default_factory=lambda: [0.5, 2.0])  # factor on each pixel-PCA component
    power: list[float] = field(default_factory=lambda: [0.25, 4.0])  # HSV saturation and value: x ** power ...
    multiply: list[float] = field(default_factory=lambda: [0.7, 1.4])  # ... * factor ...
    add: float = 0.1  # ... + offset in [-add, add]
    hue: float = 0.1  # hue + offset in [-hue, hue] (hue in [0, 1))


@dataclass
class GrowConfig:
    """Developmental networks (Wang, Ramanan, Hebert 2017; DESIGN.md route 8), routes grow-depth/-width/-both/-width2.

    With ``recipe: paper`` these routes train as the paper does (sec. 5): SGD, momentum 0.9, weight decay 5e-4,
    new layers at ``lr`` and pretrained ones at lr/10, lr divided by 10 at ``step_epochs``, no warm-up or
    label smoothing; ``recipe: train`` uses the ``train`` section instead, like every other route.
    """

    train: str = "all"  # scenario: new | top-1 (FC7-New) | top-2 (FC6-New) | all; any top-K works
    epochs: int = 15
    units: Optional[int] = None  # S new units beside the top layer; None: half its pooled width (paper: 2048 of 4096)
    depth_units: Optional[int] = None  # FCa units; None: the pooled width (paper: 4096)
    normalize: Optional[bool] = None  # L2-normalise + learnable gamma (eq. 1-2); None: on for width growth, off for depth only
    gamma: float = 10.0  # gamma's initial value (the paper's 10-20)
    dropout: float = 0.5  # after new fully connected units, as AlexNet's fc6/fc7
    recipe: Literal["paper", "train"] = "paper"
    lr: float = 0.01  # new layers (paper recipe); pretrained layers at lr/10
    step_epochs: Optional[int] = None  # None: 2/3 of ``epochs``
    lwf: float = 0.0  # weight of the Learning-without-Forgetting term for earlier tasks (continual growth); 0 = off
    lwf_temperature: float = 2.0
    previous: Optional[str] = None  # a finished run grown again, keeping its tasks' heads (set by `graft grow`)

    def __post_init__(self) -> None:  # a bad scenario is refused when the recipe is read, before any run directory exists
        import re

        if not re.fullmatch(r"new|all|top-\d+", self.train):
            raise GraftError(f"grow.train '{self.train}' must be new, top-1, top-2 (or top-K) or all; e.g. --train top-1", key="grow.train")


@dataclass
class RuntimeConfig:
    """Where and how it runs (Lightning Fabric settings, seed, output)."""

    seed: int = 0
    accelerator: str = "auto"
    devices: str = "1"
    strategy: str = "auto"
    precision: str = "32-true"
    threads: Optional[int] = None
    out: Optional[str] = None
    quiet: bool = False
    progress: bool = True  # False: no progress bars (messages and epoch lines stay); for notebooks and logs
    loggers: list[str] = field(default_factory=list)  # experiment loggers: csv, tensorboard, mlflow (graft.loggers)


@dataclass
class Recipe:
    """Everything a run needs; saved as ``recipe.yaml`` in the run directory."""

    route: str = "lpft"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    patches: PatchesConfig = field(default_factory=PatchesConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    spread: SpreadConfig = field(default_factory=SpreadConfig)
    grow: GrowConfig = field(default_factory=GrowConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    exemplar: ExemplarConfig = field(default_factory=ExemplarConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Recipe":
        return _build(cls, values, "").validate()

    def validate(self) -> "Recipe":
        """Check every value against its allowed range (:mod:`graft.recipe_checks`); return self."""
        from graft.recipe_checks import check_recipe

        check_recipe(self.to_dict())
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Recipe":
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            reason = " ".join(str(error).split())  # YAML errors span several lines; the message is one
            raise GraftError(f"{path}: cannot read recipe ({reason}); give a YAML file like a run's recipe.yaml") from None
        try:
            return cls.from_dict(values)
        except GraftError as error:  # name the file the bad key came from
            raise GraftError(f"{path}: {error}", key=error.key) from None

    def override(self, assignments: list[str]) -> "Recipe":
        """Return a copy with ``section.key=value`` assignments applied (values parsed as YAML)."""
        values = self.to_dict()
        for assignment in assignments:
            key, sep, raw = assignment.partition("=")
            if not sep:
                raise GraftError(f"override '{assignment}' is not KEY=VALUE; e.g. --set train.lr=3e-4")
            target = values
            parts = key.strip().split(".")
            for part in parts[:-1]:
                if not isinstance(target.get(part), dict):
                    raise GraftError(f"override '{assignment}': unknown section '{part}'; see `graft fit --help`")
                target = target[part]
            if parts[-1] not in target:
                raise GraftError(f"override '{assignment}': unknown key '{key}'; known: {', '.join(target)}")
            try:
                target[parts[-1]] = yaml.safe_load(raw)
            except yaml.YAMLError as error:  # tags (!!python/...) are refused by safe_load: name the key, not the parser
                reason = str(error).splitlines()[0]
                raise GraftError(f"override '{assignment}': value is not plain YAML ({reason}); give a number, word or [list]") from None
        return Recipe.from_dict(values)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a dict, checking keys and types."""
    if not isinstance(values, dict):
        raise GraftError(f"recipe section '{where or 'top'}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise GraftError(f"unknown recipe key(s) {sorted(unknown)} in '{where or 'top'}'; known: {sorted(names)}")
    kwargs = {name: _check(hints[name], value, f"{where}{name}") for name, value in values.items()}
    return cls(**kwargs)


def _check(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(arg, value, where)
            except GraftError as error:
                errors.append(str(error))
        raise GraftError(errors[0], key=where)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise GraftError(f"recipe key '{where}' must be one of {list(typing.get_args(hint))}, got {value!r}", key=where)
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise GraftError(f"recipe key '{where}' must be a list, got {value!r}", key=where)
        (item,) = typing.get_args(hint)
        return [_check(item, v, where) for v in value]
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads '3e-4' as a string
            return float(value)
        except ValueError:
            pass
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if hint in (int, bool, str) and type(value) is hint:
        return value
    raise GraftError(f"recipe key '{where}' must be {getattr(hint, '__name__', hint)}, got {value!r}", key=where)
