"""Preprocessing and augmentation presets on torchvision.transforms.v2.

Inputs are uint8 (3, H, W) tensors; outputs float32, normalised with the backbone's
mean and std. Batch-level MixUp/CutMix are returned separately (they need labels).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torchvision.transforms import v2

from graft.data.sources import decode_problem
from graft.errors import GraftError
from graft.placement import holds_files
from graft.recipe import AugmentConfig, DataConfig
from graft.recipe_checks import AUGMENT_PRESETS as PRESETS  # preset names are recipe values



@dataclass(frozen=True)
class Preprocessing:
    """What an image goes through before the network; saved with every checkpoint."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Preprocessing":
        return cls(values["size"], tuple(values["mean"]), tuple(values["std"]), values["interpolation"], values["crop_pct"])


def resolve_preprocessing(data_config: dict[str, Any], data: DataConfig) -> Preprocessing:
    """Combine the backbone's data config (timm ``resolve_model_data_config``) with the recipe's overrides."""
    size = data.image_size or int(data_config["input_size"][-1])
    return Preprocessing(
        size=size,
        mean=tuple(float(m) for m in data_config["mean"]),
        std=tuple(float(s) for s in data_config["std"]),
        interpolation=data.interpolation or data_config.get("interpolation", "bilinear"),
        crop_pct=data.crop_pct,
    )


def _mode(name: str) -> v2.InterpolationMode:
    return {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC,
            "nearest": v2.InterpolationMode.NEAREST}.get(name, v2.InterpolationMode.BILINEAR)


def _finish(pre: Preprocessing) -> list[Any]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std))]


def eval_transform(pre: Preprocessing) -> Callable[[torch.Tensor], torch.Tensor]:
    """Resize the shorter side to size/crop_pct, centre-crop ``size``, normalise."""
    resize = int(round(pre.size / pre.crop_pct))
    return v2.Compose([v2.Resize(resize, interpolation=_mode(pre.interpolation), antialias=True),
                       v2.CenterCrop(pre.size), *_finish(pre)])


def augment_options(augment: AugmentConfig) -> dict[str, Any]:
    """The preset's options with the recipe's explicit ones on top."""
    if augment.preset not in PRESETS:
        raise GraftError(f"unknown augmentation preset '{augment.preset}'; choose one of {list(PRESETS)}")
    options = dict(PRESETS[augment.preset])
    for key in ("hflip", "rotate", "crop_scale", "color", "translate"):
        value = getattr(augment, key)
        if value is not None:
            options[key] = value
    return options


def _augment_steps(pre: Preprocessing, augment: AugmentConfig) -> list[Any]:
    """The per-image augmentation steps of ``augment`` on uint8 images, before normalisation."""
    options = augment_options(augment)
    interpolation = _mode(pre.interpolation)
    steps: list[Any] = []
    if options.get("crop_scale"):
        steps.append(v2.RandomResizedCrop(pre.size, scale=(options["crop_scale"], 1.0), interpolation=interpolation, antialias=True))
    else:
        resize = int(round(pre.size / pre.crop_pct))
        steps += [v2.Resize(resize, interpolation=interpolation, antialias=True), v2.CenterCrop(pre.size)]
    if options.get("hflip"):
        steps.append(v2.RandomHorizontalFlip())
    if options.get("rotate") or options.get("translate"):
        translate = options.get("translate") or 0.0
        steps.append(v2.RandomAffine(degrees=options.get("rotate") or 0.0, translate=(translate, translate)))
    if options.get("color"):
        c = options["color"]
        steps.append(v2.ColorJitter(brightness=c, contrast=c, saturation=c))
    if options.get("trivial"):
        steps.append(v2.TrivialAugmentWide(interpolation=interpolation))
    return steps


def train_transform(pre: Preprocessing, augment: AugmentConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-image training augmentation of ``augment`` (preset plus explicit options)."""
    return v2.Compose([*_augment_steps(pre, augment), *_finish(pre)])


def strong_transform(pre: Preprocessing, augment: AugmentConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """FixMatch's strong view (Sohn et al. 2020 §2.3): the recipe's augmentation, then RandAugment (2 operations at
    magnitude 10 of 31, torchvision's scale) and Cutout (one erased square of up to a quarter of the image)."""
    return v2.Compose([*_augment_steps(pre, augment), v2.RandAugment(num_ops=2, magnitude=10, interpolation=_mode(pre.interpolation)),
                       *_finish(pre), v2.RandomErasing(p=1.0, scale=(0.02, 0.25), ratio=(1.0, 1.0))])


class TwoViews:
    """One image as (2, 3, S, S): a weak view (the recipe's augmentation) and a strong one (:func:`strong_transform`)."""

    def __init__(self, pre: Preprocessing, augment: AugmentConfig) -> None:
        self.weak, self.strong = train_transform(pre, augment), strong_transform(pre, augment)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.weak(image), self.strong(image)])


def batch_mixer(augment: AugmentConfig, num_classes: int) -> Optional[Callable[..., tuple[torch.Tensor, torch.Tensor]]]:
    """MixUp and/or CutMix on a batch (one of them at random per batch), or None."""
    mixers = []
    if augment.mixup > 0:
        mixers.append(v2.MixUp(alpha=augment.mixup, num_classes=num_classes))
    if augment.cutmix > 0:
        mixers.append(v2.CutMix(alpha=augment.cutmix, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 array -> (3, H, W) uint8 tensor."""
    return torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)


class TransformedImages(torch.utils.data.Dataset):
    """An ImageSet seen through a transform: items are (float tensor (3, S, S), label).

    An image file whose header passed the scan but whose body fails to decode (e.g. a JPEG cut short) gives None
    instead of an item, which :func:`graft.placement.collate_readable` drops from its batch, and is flagged in
    :attr:`unreadable`: a tensor in shared memory, so a flag set in a loader worker process is seen by the main process,
    which names the file and the reason (:meth:`unreadable_reasons`) once the loader is done.
    """

    def __init__(self, images: Any, transform: Callable[[torch.Tensor], torch.Tensor], indexed: bool = False) -> None:
        self.images = images
        self.transform = transform
        self.indexed = indexed  # items become (image, label, index): for per-image tables such as cached teacher logits
        self.unreadable: Optional[torch.Tensor] = torch.zeros(len(images), dtype=torch.bool).share_memory_() if holds_files(images) else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Optional[tuple[Any, ...]]:
        """(image, label), or (image, (C,) 0/1 float targets) for multi-label sets; ``index`` last when indexed;
        None when the image's file does not decode."""
        targets = getattr(self.images, "targets", None)
        label = torch.from_numpy(targets[index]) if targets is not None else int(self.images.labels[index])
        try:
            array = self.images.image(index)
        except GraftError:  # read_image names the file and why; the main process asks again (unreadable_reasons)
            if self.unreadable is None:
                raise
            self.unreadable[index] = True
            return None
        image = self.transform(to_tensor(array))
        return (image, label, index) if self.indexed else (image, label)

    def unreadable_indices(self) -> np.ndarray:
        """Indices of the images that failed to decode in any process so far, in order."""
        return np.zeros(0, np.int64) if self.unreadable is None else np.flatnonzero(self.unreadable.numpy())

    def unreadable_reasons(self, indices: Optional[Sequence[int]] = None) -> dict[int, str]:
        """{index: why its body does not decode} for ``indices`` (default :meth:`unreadable_indices`), found again by
        decoding each in this process: few files, and a worker's exception does not travel with its batch."""
        indices = self.unreadable_indices() if indices is None else indices
        return {int(index): decode_problem(self.images.paths[int(index)]) for index in indices}
