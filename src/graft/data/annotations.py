"""Multi-label image sets with bounding boxes: Pascal VOC XML folders and COCO JSON.

Both readers return an :class:`ImageSet` with ``targets`` (N, C) 0/1 and ``boxes`` (per image an
(M, 5) float array ``[class, x0, y0, x1, y1]`` in pixel coordinates, x1/y1 exclusive), as needed by
the patches route of Oquab et al. 2014 (DESIGN.md route 5). Bad input, as the issue asks: boxes that
reach outside the image are clipped and counted; an empty or unparsable annotation file is an error
naming it; class names not in the class list are an error naming them; images without objects are
kept (all background).
"""
from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from graft.data.sources import ImageSet, check_files
from graft.errors import GraftError

log = logging.getLogger("graft")


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size  # (width, height)


class _Collector:
    """Accumulates images and their objects, then checks the files (by header, all at once: :func:`check_files`) and
    builds the ImageSet (shared by both readers)."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.listed: list[tuple[Path, Optional[tuple[int, int]], list[tuple[str, float, float, float, float]]]] = []
        self.paths: list[Path] = []
        self.objects: list[list[tuple[str, float, float, float, float]]] = []
        self.skipped: list[tuple[str, str]] = []
        self.clipped = 0

    def add(self, path: Path, size: Optional[tuple[int, int]], objects: list[tuple[str, float, float, float, float]]) -> None:
        self.listed.append((path, size, objects))

    def check(self) -> None:
        """Keep the listed images whose files are usable, their boxes clipped to the image."""
        _, self.skipped, _ = check_files([path for path, _, _ in self.listed], self.origin)
        refused = {file for file, _ in self.skipped}
        for path, size, objects in self.listed:
            if str(path) not in refused:
                self._keep(path, size, objects)

    def _keep(self, path: Path, size: Optional[tuple[int, int]], objects: list[tuple[str, float, float, float, float]]) -> None:
        width, height = size if size and size[0] > 0 and size[1] > 0 else _image_size(path)
        kept = []
        for name, x0, y0, x1, y1 in objects:
            clipped = (max(0.0, min(x0, x1)), max(0.0, min(y0, y1)), min(float(width), max(x0, x1)), min(float(height), max(y0, y1)))
            if clipped != (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)):
                self.clipped += 1
            if clipped[2] > clipped[0] and clipped[3] > clipped[1]:
                kept.append((name, *clipped))
        self.paths.append(path)
        self.objects.append(kept)

    def build(self, classes: list[str], where: str) -> ImageSet:
        names = {name for objects in self.objects for name, *_ in objects}
        unknown = sorted(names - set(classes))
        if unknown:
            raise GraftError(f"{where}: class names {unknown} are not in the class list {classes}; "
                             "add them to the class list (classes.txt / categories) or remove those objects")
        index = {name: i for i, name in enumerate(classes)}
        targets = np.zeros((len(self.paths), len(classes)), np.float32)
        boxes, labels = [], []
        for row, objects in enumerate(self.objects):
            array = np.array([[index[n], x0, y0, x1, y1] for n, x0, y0, x1, y1 in objects], np.float32).reshape(-1, 5)
            targets[row, array[:, 0].astype(np.int64)] = 1
            boxes.append(array)
            areas = (array[:, 3] - array[:, 1]) * (array[:, 4] - array[:, 2])
            labels.append(int(array[areas.argmax(), 0]) if len(array) else -1)
        if self.clipped:
            log.warning("%s: %d boxes reached outside their image and were clipped", where, self.clipped)
        return ImageSet(classes=list(classes), labels=np.asarray(labels, np.int64), paths=self.paths, origin=self.origin,
                        skipped=self.skipped, targets=targets, boxes=boxes, clipped_boxes=self.clipped)


def _text(node: Optional[ElementTree.Element], tag: str, file: Path) -> str:
    found = None if node is None else node.find(tag)
    if found is None or found.text is None:
        raise GraftError(f"{file}: missing <{tag}>; every VOC annotation needs it")
    return found.text.strip()


def read_voc(root: Path, classes: Optional[list[str]] = None) -> ImageSet:
    """A Pascal VOC folder: ``Annotations/*.xml`` and the images in ``JPEGImages/`` (or beside the XML).

    The class list is ``classes`` (a training set's), else ``classes.txt`` in ``root``, else the
    sorted names found. VOC coordinates are 1-based inclusive; they become [xmin-1, xmax) here.
    """
    files = sorted((root / "Annotations").glob("*.xml"))
    if not files:
        raise GraftError(f"{root}/Annotations: no .xml files; write one VOC annotation per image")
    collector = _Collector(str(root))
    for file in files:
        if file.stat().st_size == 0:
            raise GraftError(f"{file}: empty annotation file; write the image's VOC annotation or remove the file")
        try:
            tree = ElementTree.parse(file).getroot()
        except ElementTree.ParseError as error:
            raise GraftError(f"{file}: not valid XML ({error}); fix or remove the file") from error
        filename = _text(tree, "filename", file)
        image = root / "JPEGImages" / filename
        image = image if image.exists() or not (file.parent / filename).exists() else file.parent / filename
        size = tree.find("size")
        dims = (int(float(_text(size, "width", file))), int(float(_text(size, "height", file)))) if size is not None else None
        objects = []
        for obj in tree.iter("object"):
            box = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (float(_text(box, tag, file)) for tag in ("xmin", "ymin", "xmax", "ymax"))
            objects.append((_text(obj, "name", file), xmin - 1, ymin - 1, xmax, ymax))
        collector.add(image, dims, objects)
    collector.check()
    if classes is None and (root / "classes.txt").exists():
        classes = [line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip()]
    if classes is None:
        classes = sorted({name for objects in collector.objects for name, *_ in objects})
    return _finish(collector, classes, str(root))


def read_coco(path: Path, classes: Optional[list[str]] = None) -> ImageSet:
    """A COCO JSON (``images``, ``annotations`` with ``bbox`` [x, y, w, h], ``categories``); image paths relative to it."""
    if path.stat().st_size == 0:
        raise GraftError(f"{path}: empty annotation file; write COCO JSON with images, annotations and categories")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise GraftError(f"{path}: not valid JSON ({error}); fix the file") from error
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise GraftError(f"{path}: not a COCO annotation file; it needs 'images', 'annotations' and 'categories'")
    categories = {c["id"]: c["name"] for c in data["categories"]}
    per_image: dict[int, list] = {image["id"]: [] for image in data["images"]}
    for annotation in data.get("annotations", []):
        if annotation["category_id"] not in categories:
            raise GraftError(f"{path}: annotation {annotation.get('id')} has category_id {annotation['category_id']}, "
                             f"which is not among the categories {sorted(categories)}; add the category or fix the id")
        x, y, w, h = (float(v) for v in annotation["bbox"])
        per_image.setdefault(annotation["image_id"], []).append((categories[annotation["category_id"]], x, y, x + w, y + h))
    collector = _Collector(str(path))
    for image in data["images"]:
        file = Path(image["file_name"])
        size = (int(image["width"]), int(image["height"])) if "width" in image and "height" in image else None
        collector.add(file if file.is_absolute() else path.parent / file, size, per_image[image["id"]])
    collector.check()
    if classes is None:
        classes = [categories[key] for key in sorted(categories)]
    return _finish(collector, classes, str(path))


def _finish(collector: _Collector, classes: list[str], where: str) -> ImageSet:
    images = collector.build(classes, where)
    if len(images) == 0:
        raise GraftError(f"{where}: no readable images (skipped {len(images.skipped)}); check the image paths in the annotations")
    return images


def reindex_multilabel(images: ImageSet, classes: list[str]) -> ImageSet:
    """Map a multi-label set onto another class list (a training set's); present classes it lacks are an error."""
    assert images.targets is not None and images.boxes is not None
    present = [images.classes[i] for i in np.flatnonzero(images.targets.sum(0) > 0)]
    unknown = sorted(set(present) - set(classes))
    if unknown:
        raise GraftError(f"{images.origin}: classes {unknown} are not among the training classes {classes}; remove them or retrain")
    mapping = np.array([classes.index(c) if c in classes else -1 for c in images.classes] + [-1], np.int64)
    targets = np.zeros((len(images), len(classes)), np.float32)
    for old, new in enumerate(mapping[:-1]):
        if new >= 0:
            targets[:, new] = images.targets[:, old]
    boxes = [np.concatenate([mapping[b[:, 0].astype(np.int64)][:, None].astype(np.float32), b[:, 1:]], 1) for b in images.boxes]
    return ImageSet(classes, mapping[images.labels], images.arrays, images.paths, images.origin, images.skipped,
                    targets=targets, boxes=boxes, clipped_boxes=images.clipped_boxes)
