"""Exemplar-CNN surrogate data (Dosovitskiy et al. 2014, sec. 3; DESIGN.md route 7).

1. :func:`sample_seed_patches`: windows at several scales and positions, drawn with probability
   proportional to their mean squared gradient magnitude ("considerable gradients", sec. 3);
   each kept window is stored with a context twice its side, so translated / scaled / rotated
   copies show real image content instead of padding.
2. :class:`SurrogateCopies`: class ``c`` = seed patch ``c``; copy ``k`` of it is a random
   composition of the switchable transformation families, generated on the fly and reproducible
   from (seed, c, k) alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from graft.data.sources import ImageSet, positions_after_discard
from graft.errors import GraftError
from graft.recipe import ExemplarConfig

FAMILIES = ("translate", "scale", "rotate", "contrast", "color", "hue")


@dataclass
class SeedPatches:
    """N seed patches: ``contexts`` (N, 3, 2P, 2P) uint8 with the patch in the central P x P;
    ``windows`` (N, 4) as (image index, left, top, side) in source pixels; ``energy`` (N,) their
    mean squared gradient; pixel-PCA of the patches (``pca_mean`` (3,), ``pca_axes`` (3, 3) columns)."""

    contexts: torch.Tensor
    windows: np.ndarray
    energy: np.ndarray
    pca_mean: torch.Tensor
    pca_axes: torch.Tensor

    def __len__(self) -> int:
        return len(self.windows)


def _integral_energy(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H+1, W+1) integral image of the squared gradient magnitude of its grey values."""
    grey = image.astype(np.float32).mean(axis=2) / 255.0
    gy, gx = np.gradient(grey)
    table = np.zeros((grey.shape[0] + 1, grey.shape[1] + 1), np.float64)
    table[1:, 1:] = (gx * gx + gy * gy).cumsum(0).cumsum(1)
    return table


def check_patch_source(images: ImageSet, config: ExemplarConfig) -> None:
    """Refuse, before anything is trained, a request that the images cannot satisfy."""
    most = len(images) * config.patches_per_image
    if config.classes > most:
        raise GraftError(f"{images.origin}: {config.classes} surrogate classes need {config.classes} seed patches, but "
                         f"{len(images)} images x exemplar.patches_per_image={config.patches_per_image} give at most {most}; "
                         f"pass --classes {most} or less (or raise exemplar.patches_per_image)")
    if config.classes < 2:
        raise GraftError(f"exemplar.classes={config.classes}: the surrogate task needs at least 2 classes")
    unknown = sorted(set(config.transforms) - set(FAMILIES))
    if unknown:
        raise GraftError(f"exemplar.transforms: unknown {unknown}; choose among {list(FAMILIES)}")


def _too_small(images: ImageSet, index: int, side: int, patch: int) -> GraftError:
    return GraftError(f"{images.origin}: image {index} is {side} px on its short side, smaller than the {patch} px patch; "
                      f"pass --patch-size {side} (or less), or --set exemplar.upscale_small=true to upscale such windows")


def sample_seed_patches(images: ImageSet, config: ExemplarConfig, seed: int) -> SeedPatches:
    """Draw ``config.classes`` seed windows, probability proportional to gradient energy, at most
    ``patches_per_image`` from one image (without replacement, by Gumbel top-k over log-energies). Images whose file
    does not decode leave ``images`` (:meth:`ImageSet.discard` names them); the windows index the images that remain."""
    check_patch_source(images, config)
    rng = np.random.default_rng([seed, 7])
    patch = config.patch_size
    rows = []  # (image, left, top, side, energy)
    unreadable: dict[int, str] = {}
    for index, image in images.decoded(unreadable):
        short = min(image.shape[:2])
        if short < patch and not config.upscale_small:
            raise _too_small(images, index, short, patch)
        table = _integral_energy(image)
        sides = np.minimum(np.round(patch * rng.choice(config.scales, config.candidates_per_image)).astype(int), short)
        lefts = (rng.random(len(sides)) * (image.shape[1] - sides + 1)).astype(int)
        tops = (rng.random(len(sides)) * (image.shape[0] - sides + 1)).astype(int)
        sums = table[tops + sides, lefts + sides] - table[tops, lefts + sides] - table[tops + sides, lefts] + table[tops, lefts]
        rows.append(np.stack([np.full(len(sides), index), lefts, tops, sides, sums / (sides * sides)], 1))
    images.discard(unreadable)  # from here on, indices count the images that remain (none left: the error naming them)
    candidates = np.concatenate(rows)
    candidates[:, 0] = positions_after_discard(candidates[:, 0].astype(np.int64), unreadable)
    keys = np.log(candidates[:, 4] + 1e-12) + rng.gumbel(size=len(candidates))
    taken, per_image = [], np.zeros(len(images), np.int64)
    for row in np.argsort(-keys):
        image_index = int(candidates[row, 0])
        if per_image[image_index] < config.patches_per_image:
            per_image[image_index] += 1
            taken.append(row)
            if len(taken) == config.classes:
                break
    chosen = candidates[np.array(taken)]
    contexts = _contexts(images, chosen[:, :4].astype(np.int64), patch)
    mean, axes = _pixel_pca(contexts[:, :, patch // 2: patch // 2 + patch, patch // 2: patch // 2 + patch])
    return SeedPatches(contexts, chosen[:, :4].astype(np.int64), chosen[:, 4], mean, axes)


def _contexts(images: ImageSet, windows: np.ndarray, patch: int) -> torch.Tensor:
    """(N, 3, 2P, 2P) uint8: a square of twice each window's side around it, resampled (reflected at borders)."""
    out = torch.empty((len(windows), 3, 2 * patch, 2 * patch), dtype=torch.uint8)
    for index in np.unique(windows[:, 0]):
        members = np.flatnonzero(windows[:, 0] == index)
        image = torch.from_numpy(np.array(images.image(int(index)))).permute(2, 0, 1).float()[None]
        height, width = image.shape[-2:]
        left, top, side = (torch.from_numpy(windows[members, i]).float() for i in (1, 2, 3))
        theta = torch.zeros(len(members), 2, 3)  # output [-1, 1] -> the context square in normalised image coordinates
        theta[:, 0, 0], theta[:, 1, 1] = 2 * side / width, 2 * side / height
        theta[:, 0, 2] = (2 * (left + side / 2)) / width - 1
        theta[:, 1, 2] = (2 * (top + side / 2)) / height - 1
        grid = F.affine_grid(theta, [len(members), 3, 2 * patch, 2 * patch], align_corners=False)
        sampled = F.grid_sample(image.expand(len(members), -1, -1, -1), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        out[torch.from_numpy(members)] = sampled.round().clamp(0, 255).to(torch.uint8)
    return out


def _pixel_pca(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (3,) and principal axes (3, 3) (columns) of all patch pixels in [0, 1] RGB."""
    pixels = patches.permute(0, 2, 3, 1).reshape(-1, 3).double() / 255.0
    mean = pixels.mean(0)
    _, axes = torch.linalg.eigh(torch.cov((pixels - mean).T))
    return mean.float(), axes.float()


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(3, H, W) RGB in [0, 1] -> HSV with every channel in [0, 1]."""
    high, argmax = rgb.max(0)
    low = rgb.min(0).values
    delta = high - low
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    r, g, b = rgb
    hue = torch.where(argmax == 0, ((g - b) / safe) % 6, torch.where(argmax == 1, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    saturation = torch.where(high > 0, delta / torch.where(high > 0, high, torch.ones_like(high)), torch.zeros_like(high))
    return torch.stack([hue, saturation, high])


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    hue, saturation, value = hsv
    k = (torch.tensor([5.0, 3.0, 1.0]).view(3, 1, 1) + hue * 6) % 6
    return value - value * saturation * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def _log_uniform(rng: np.random.Generator, bounds: Sequence[float]) -> float:
    return float(math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]))))


class SurrogateCopies(torch.utils.data.Dataset):
    """Items ``c * len(copies) + j`` -> (copy ``copies[j]`` of seed patch ``c``, normalised (3, P, P), label ``c``).

    Every copy is a function of (seed, c, copy) only, so epochs, resumed runs and other processes
    see the same images.
    """

    def __init__(self, seeds: SeedPatches, config: ExemplarConfig, copies: Sequence[int], seed: int,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        self.seeds, self.config, self.copies, self.seed = seeds, config, list(copies), seed
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.families = set(config.transforms)

    def __len__(self) -> int:
        return len(self.seeds) * len(self.copies)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label, j = divmod(index, len(self.copies))
        return (self.copy(label, self.copies[j]) - self.mean) / self.std, label

    def copy(self, label: int, copy: int) -> torch.Tensor:
        """Copy ``copy`` of seed patch ``label``: (3, P, P) float in [0, 1]."""
        rng = np.random.default_rng([self.seed, label, copy])
        config, on = self.config, self.families
        patch = config.patch_size
        # geometry: output [-1, 1] -> context coordinates, where the seed patch spans [-0.5, 0.5]
        zoom = _log_uniform(rng, config.scale) if "scale" in on else 1.0
        angle = math.radians(rng.uniform(-config.rotate, config.rotate)) if "rotate" in on else 0.0
        shift = rng.uniform(-config.translate, config.translate, 2) if "translate" in on else np.zeros(2)
        a, b = math.cos(angle) * 0.5 / zoom, math.sin(angle) * 0.5 / zoom
        theta = torch.tensor([[[a, -b, shift[0]], [b, a, shift[1]]]], dtype=torch.float32)
        context = self.seeds.contexts[label][None].float() / 255.0
        grid = F.affine_grid(theta, [1, 3, patch, patch], align_corners=False)
        image = F.grid_sample(context, grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]
        if "contrast" in on:  # scale each pixel's projection on the principal components (same factors for all pixels)
            factors = torch.tensor([_log_uniform(rng, config.contrast) for _ in range(3)])
            axes, mean = self.seeds.pca_axes, self.seeds.pca_mean.view(3, 1, 1)
            projected = torch.einsum("ck,chw->khw", axes, image - mean) * factors.view(3, 1, 1)
            image = (torch.einsum("ck,khw->chw", axes, projected) + mean).clamp(0, 1)
        if "color" in on or "hue" in on:
            hsv = rgb_to_hsv(image)
            if "color" in on:  # saturation and value, each: x ** power * factor + offset
                for channel in (1, 2):
                    power, factor = _log_uniform(rng, config.power), _log_uniform(rng, config.multiply)
                    hsv[channel] = (hsv[channel] ** power * factor + rng.uniform(-config.add, config.add)).clamp(0, 1)
            if "hue" in on:
                hsv[0] = (hsv[0] + rng.uniform(-config.hue, config.hue)) % 1.0
            image = hsv_to_rgb(hsv)
        return image.clamp(0, 1)
