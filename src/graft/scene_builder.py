"""``graft scenes``: a multi-object benchmark built from any single-label image set.

Objects (whole images of the source set, e.g. CIFAR-10 32x32 images) are pasted at random
scales and positions onto backgrounds (crops of real photographs or generated textures) and
written as a Pascal VOC folder (``JPEGImages/*.png``, ``Annotations/*.xml``, ``classes.txt``)
plus the same boxes as COCO JSON (``annotations.json``). This recreates the *dataset capture bias*
of Oquab et al. 2014 (object-centred source images, cluttered multi-object target images) on
data that is at hand. Everything is drawn from one seeded generator.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from graft.data.sources import ImageSet, load_images
from graft.errors import GraftError


@dataclass
class SceneSpec:
    """How scenes look. Sizes are fractions of the scene side; ``max_cover``: the most of an earlier
    object's box a new object may hide (placements are redrawn up to 50 times to respect it)."""

    count: int = 200
    size: int = 128
    object_size: tuple[float, float] = (0.5, 0.9)
    objects_per_scene: tuple[int, int] = (1, 3)
    background: str = "texture"  # "texture" or an image set (.npz, folder, CSV) of photographs to crop
    max_cover: float = 0.3
    seed: int = 0


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A generated background: smooth colour noise at a few scales plus random stripes, (size, size, 3) uint8."""
    canvas = np.zeros((size, size, 3), np.float32)
    for cells in (2, 4, 8, 16):
        coarse = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
        canvas += np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), np.float32) / 4
    angle, period = rng.uniform(0, np.pi), rng.uniform(size / 12, size / 3)
    y, x = np.mgrid[0:size, 0:size]
    canvas += 30 * np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period)[..., None]
    return np.clip(canvas, 0, 255).astype(np.uint8)


def photo_crop(rng: np.random.Generator, photos: ImageSet, size: int) -> np.ndarray:
    """A random square crop (at least half the shorter side) of a random photograph, resized to ``size``."""
    image = photos.image(int(rng.integers(len(photos))))
    height, width = image.shape[:2]
    side = int(rng.integers(min(height, width) // 2, min(height, width) + 1))
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    crop = Image.fromarray(image[top:top + side, left:left + side])
    return np.array(crop.resize((size, size), Image.BILINEAR))  # writable: objects are pasted into it


def _covered(box: tuple[int, int, int, int], other: tuple[int, int, int, int]) -> float:
    """Share of ``other``'s area that ``box`` covers."""
    width = min(box[2], other[2]) - max(box[0], other[0])
    height = min(box[3], other[3]) - max(box[1], other[1])
    return max(width, 0) * max(height, 0) / ((other[2] - other[0]) * (other[3] - other[1]))


def _place(rng: np.random.Generator, spec: SceneSpec, placed: list[tuple[int, int, int, int]]) -> Optional[tuple[int, int, int, int]]:
    for _ in range(50):
        side = int(round(rng.uniform(*spec.object_size) * spec.size))
        side = max(4, min(side, spec.size))
        x0, y0 = int(rng.integers(0, spec.size - side + 1)), int(rng.integers(0, spec.size - side + 1))
        box = (x0, y0, x0 + side, y0 + side)
        if all(_covered(box, other) <= spec.max_cover for other in placed):
            return box
    return None


def _voc_xml(filename: str, size: int, objects: list[tuple[str, tuple[int, int, int, int]]]) -> bytes:
    root = ElementTree.Element("annotation")
    ElementTree.SubElement(root, "filename").text = filename
    dims = ElementTree.SubElement(root, "size")
    for tag, value in (("width", size), ("height", size), ("depth", 3)):
        ElementTree.SubElement(dims, tag).text = str(value)
    for name, (x0, y0, x1, y1) in objects:
        obj = ElementTree.SubElement(root, "object")
        ElementTree.SubElement(obj, "name").text = name
        ElementTree.SubElement(obj, "difficult").text = "0"
        box = ElementTree.SubElement(obj, "bndbox")
        for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):  # VOC: 1-based, inclusive
            ElementTree.SubElement(box, tag).text = str(value)
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="utf-8")


def build_scenes(objects: Any, out: str | Path, spec: SceneSpec = SceneSpec()) -> dict[str, Any]:
    """Write ``spec.count`` scenes made of images of ``objects`` (single-label DATA) to ``out``; return a summary."""
    low, high = spec.object_size
    if not 0 < low <= high <= 1:
        raise GraftError(f"object size range {spec.object_size} must satisfy 0 < min <= max <= 1 (fractions of the scene side)")
    if spec.count < 1 or not 8 <= spec.size <= 4096:
        raise GraftError(f"--count {spec.count} --size {spec.size}: give at least 1 scene and a side of 8 to 4096 pixels")
    if not 0 <= spec.objects_per_scene[0] <= spec.objects_per_scene[1]:
        raise GraftError(f"objects per scene {spec.objects_per_scene} must be 0 <= min <= max")
    source = load_images(objects)
    if source.multilabel:
        raise GraftError(f"{source.origin}: scenes are built from a single-label set (one object per image); this one is multi-label")
    labelled = np.flatnonzero(source.labels >= 0)
    photos = None if spec.background == "texture" else load_images(spec.background, labelled=False)
    out = Path(out)
    if (out / "Annotations").exists() and any((out / "Annotations").iterdir()):
        raise GraftError(f"{out}: already holds scenes; choose another output folder or remove it")
    (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (out / "Annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    coco: dict[str, Any] = {"images": [], "annotations": [],
                            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(source.classes)]}
    object_count = 0
    for index in range(spec.count):
        canvas = texture(rng, spec.size) if photos is None else photo_crop(rng, photos, spec.size)
        placed: list[tuple[int, int, int, int]] = []
        scene_objects = []
        for _ in range(int(rng.integers(spec.objects_per_scene[0], spec.objects_per_scene[1] + 1))):
            box = _place(rng, spec, placed)
            if box is None:
                continue
            item = int(labelled[rng.integers(len(labelled))])
            side = box[2] - box[0]
            pasted = Image.fromarray(source.image(item)).resize((side, side), Image.BILINEAR)
            canvas[box[1]:box[3], box[0]:box[2]] = np.asarray(pasted)
            placed.append(box)
            scene_objects.append((source.classes[int(source.labels[item])], box))
        filename = f"scene_{index:05d}.png"
        Image.fromarray(canvas).save(out / "JPEGImages" / filename)
        (out / "Annotations" / f"scene_{index:05d}.xml").write_bytes(_voc_xml(filename, spec.size, scene_objects))
        coco["images"].append({"id": index + 1, "file_name": f"JPEGImages/{filename}", "width": spec.size, "height": spec.size})
        for name, (x0, y0, x1, y1) in scene_objects:
            object_count += 1
            coco["annotations"].append({"id": object_count, "image_id": index + 1, "category_id": source.classes.index(name) + 1,
                                        "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    (out / "annotations.json").write_text(json.dumps(coco))
    (out / "classes.txt").write_text("\n".join(source.classes) + "\n")
    summary = {"scenes": spec.count, "objects": object_count, "classes": source.classes, "source": source.origin,
               "spec": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}}
    (out / "scenes.json").write_text(json.dumps(summary, indent=2))
    return summary


def scenes(objects: Any, out: str | Path, count: int = 200, size: int = 128, object_size: tuple[float, float] = (0.5, 0.9),
           objects_per_scene: tuple[int, int] = (1, 3), background: str = "texture", seed: int = 0) -> dict[str, Any]:
    """Write a multi-object benchmark (VOC XML + COCO JSON) of ``count`` scenes made from single-label ``objects``.

    >>> graft.scenes("cifar10_test.npz", "scenes/test", object_size=(0.15, 0.3), background="photos.npz", seed=1)
    """
    spec = SceneSpec(count=count, size=size, object_size=tuple(object_size), objects_per_scene=tuple(objects_per_scene),
                     background=str(background), seed=seed)
    return build_scenes(objects, out, spec)
