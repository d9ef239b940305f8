"""Read a labelled image set from a class folder, a CSV of path,label or an .npz.

Every reader returns an :class:`ImageSet`: images as RGB uint8 (H, W, 3) arrays,
integer labels indexing ``classes``. Files are checked by their header (:mod:`graft.data.scan`); corrupt ones are
named, skipped and counted.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from graft.data.npz import check_class_names, check_labels, normalise_images, read_arrays
from graft.data.scan import bomb_reason, scan_cache_file, scan_files
from graft.errors import GraftError

log = logging.getLogger("graft")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
DECODE_FAILED = "cannot read image"  # its body does not decode (the header passed the scan)
DATA_FORMS = ("a folder with one sub-folder per class, a CSV of path,label, an .npz with images/labels, "
              "or (several labels per image) a Pascal VOC folder with Annotations/ or a COCO .json")


@dataclass
class ImageSet:
    """Images (in memory or as files) with labels. ``labels[i] == -1`` means unlabelled."""

    classes: list[str]
    labels: np.ndarray
    arrays: Optional[np.ndarray] = None  # (N, H, W, 3) uint8
    paths: Optional[list[Path]] = None
    origin: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    # multi-label sets (Pascal VOC XML, COCO JSON): (N, C) 0/1 targets and per image an (M, 5) array of
    # boxes [class, x0, y0, x1, y1] in pixels; ``labels`` then holds each image's largest object (-1: none)
    targets: Optional[np.ndarray] = None
    boxes: Optional[list[np.ndarray]] = None
    clipped_boxes: int = 0  # boxes that reached outside their image and were clipped to it
    outside: list[str] = field(default_factory=list)  # CSV paths outside the CSV's folder: allowed, listed in the run's report
    headers: tuple[int, int] = (0, 0)  # files opened to check their header, files whose check came from the scan cache

    @property
    def multilabel(self) -> bool:
        return self.targets is not None

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> np.ndarray:
        """Image ``index`` as an RGB uint8 (H, W, 3) array."""
        if self.arrays is not None:
            return self.arrays[index]
        assert self.paths is not None
        return read_image(self.paths[index])

    def subset(self, indices: Sequence[int] | np.ndarray) -> "ImageSet":
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet(
            classes=self.classes,
            labels=self.labels[indices],
            arrays=None if self.arrays is None else self.arrays[indices],
            paths=None if self.paths is None else [self.paths[i] for i in indices],
            origin=self.origin,
            skipped=self.skipped,
            targets=None if self.targets is None else self.targets[indices],
            boxes=None if self.boxes is None else [self.boxes[i] for i in indices],
            clipped_boxes=self.clipped_boxes,
            outside=self.outside,
        )

    def discard(self, reasons: dict[int, str]) -> None:
        """Remove the images ``reasons`` names ({index: why its file does not decode}) from this set, in place, and name
        each in :attr:`skipped`: what any later step (labels, rows of features, the report's counts) sees is the images
        that remain. A set left with no image is an error naming the files."""
        if not reasons:
            return
        assert self.paths is not None, "only images read from files can fail to decode"
        named = [(str(self.paths[index]), reason) for index, reason in sorted(reasons.items())]
        if len(named) == len(self):
            file, reason = named[0]
            raise GraftError(f"{file}: {reason}" if len(named) == 1 else
                             f"{self.origin}: none of its {len(named)} images decodes (e.g. {file}: {reason})")
        for file, reason in named:
            log.warning("skipped %s: %s", file, reason)
        kept = self.subset(np.setdiff1d(np.arange(len(self)), list(reasons)))
        self.labels, self.paths, self.targets, self.boxes = kept.labels, kept.paths, kept.targets, kept.boxes
        self.skipped = [*self.skipped, *named]  # a new list: sets that shared the old one (subsets) still hold these images

    def decoded(self, unreadable: dict[int, str]) -> Iterator[tuple[int, np.ndarray]]:
        """(index, pixels) of each image that decodes, in order, for loops that decode in this process (windows,
        seed patches); each file that does not goes into ``unreadable`` ({index: why}) for :meth:`discard` afterwards."""
        for index in range(len(self)):
            try:
                yield index, self.image(index)
            except GraftError as error:
                if self.paths is None:
                    raise
                unreadable[index] = _reason(error, self.paths[index])

    def fingerprint(self) -> str:
        """Content hash of the image list (pixels for arrays; path, size and mtime for files)."""
        digest = hashlib.sha256()
        if self.arrays is not None:
            digest.update(str(self.arrays.shape).encode())
            digest.update(np.ascontiguousarray(self.arrays).data)
        else:
            for path in self.paths or []:
                stat = path.stat()
                digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]

    def class_counts(self) -> dict[str, int]:
        if self.targets is not None:  # images showing each class
            return {name: int(n) for name, n in zip(self.classes, (self.targets > 0).sum(0))}
        counts = np.bincount(self.labels[self.labels >= 0], minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, counts)}


def to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """Convert any PIL mode to RGB uint8: 16-bit and float greyscale are rescaled, alpha dropped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / high * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_image(path: Path) -> np.ndarray:
    """The file's pixels as RGB uint8 (H, W, 3); a file that does not decode is a GraftError naming it and why."""
    try:
        with _bombs_refused(), Image.open(path) as image:
            return to_rgb_uint8(image)
    except Image.DecompressionBombError:
        raise GraftError(f"{path}: {bomb_reason(path)}") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as error:
        raise GraftError(f"{path}: {DECODE_FAILED} ({type(error).__name__}: {error}); replace or remove the file") from error


def positions_after_discard(indices: np.ndarray, discarded: Iterable[int]) -> np.ndarray:
    """Where images ``indices`` (none of them discarded) stand once :meth:`ImageSet.discard` took ``discarded`` out."""
    return np.asarray(indices, np.int64) - np.searchsorted(np.sort(np.fromiter(discarded, np.int64)), indices)


def decode_problem(path: Path) -> str:
    """Why the body of ``path`` does not decode (its header was fine: it passed the scan), from decoding it here."""
    try:
        read_image(Path(path))
    except GraftError as error:
        return _reason(error, path)
    return f"{DECODE_FAILED} in a loader worker, though it decodes now (changed since?)"


def _reason(error: GraftError, path: Path) -> str:
    """The why of :func:`read_image`'s error, without the file name it starts with."""
    return str(error).removeprefix(f"{path}: ")


@contextlib.contextmanager
def _bombs_refused() -> Iterator[None]:
    """PIL warns above Image.MAX_IMAGE_PIXELS and raises above twice that: both mean 'do not decode this file'."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except Image.DecompressionBombWarning as warning:
            raise Image.DecompressionBombError(str(warning)) from None


def check_files(files: Sequence[Path], origin: str | Path) -> tuple[list[Path], list[tuple[str, str]], tuple[int, int]]:
    """(usable files, refused (file, reason), (headers opened, headers from the cache)) of ``files`` in their order:
    each checked by its header (format, size, mode; :mod:`graft.data.scan`), in parallel for large sets, cached per
    ``origin`` so a second listing opens only files that changed. Bodies are decoded later, by the loaders."""
    scan = scan_files(files, scan_cache_file(origin))
    for file, reason in scan.skipped:
        log.warning("skipped %s: %s", file, reason)
    return scan.usable, scan.skipped, (scan.opened, scan.from_cache)


def _files_to_set(files: list[tuple[Path | str, str]], classes: list[str], origin: str) -> ImageSet:
    usable, skipped, headers = check_files([path for path, _ in files], origin)
    refused = {file for file, _ in skipped}
    index = {name: i for i, name in enumerate(classes)}
    kept = [(path, index[label]) for path, label in files if str(path) not in refused]
    return ImageSet(classes=classes, labels=np.asarray([label for _, label in kept], np.int64), paths=[path if isinstance(path, Path) else Path(path) for path, _ in kept],
                    origin=origin, skipped=skipped, headers=headers)


def _read_folder(root: Path) -> tuple[list[tuple[Path, str]], list[str]]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise GraftError(f"{root}: no class sub-folders; put the images of each class in its own sub-folder")
    files = []
    for folder in folders:
        members = list(_files_under(folder))
        if not members:
            raise GraftError(f"{folder}: class folder has no images; add images or remove the folder")
        files.extend((p, folder.name) for p in members)
    return files, [f.name for f in folders]


def _files_under(folder: Path) -> Iterator[Path]:
    """Every file under ``folder`` (not hidden ones) in path order, by ``os.scandir`` sorted by name (the order of
    sorting the paths, without comparing 10^5 Path objects): its entries know their type without one ``stat`` per
    file. A dangling symlink is neither file nor folder: it is listed, so it is skipped and named like an unreadable
    file; a linked folder is not walked (it could link back)."""
    with os.scandir(folder) as listing:
        entries = sorted(listing, key=lambda entry: entry.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _files_under(folder / entry.name)
        elif entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path)):
            yield folder / entry.name


def _read_csv(path: Path) -> tuple[list[tuple[Path, str]], list[str]]:
    """Rows ``path,label`` (UTF-8, a byte-order mark is dropped); a first row whose path is neither an existing
    file nor has an image suffix is a header (``path,label``, ``file,class`` ...) and is skipped."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csv.reader(handle) if row and not row[0].startswith("#")]
    except UnicodeDecodeError as error:
        raise GraftError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason}); save the CSV as UTF-8") from None
    except csv.Error as error:
        raise GraftError(f"{path}: not a readable CSV ({error}); write one 'path,label' line per image") from None
    if rows and len(rows[0]) >= 2 and _is_header(rows[0][0].strip(), path.parent):
        rows = rows[1:]
    if not rows:
        raise GraftError(f"{path}: CSV has no rows; write one 'path,label' line per image")
    files = []
    for number, row in enumerate(rows, start=1):
        if len(row) < 2:
            raise GraftError(f"{path}: row {number} {row!r} is not 'path,label'")
        if not row[1].strip():
            raise GraftError(f"{path}: row {number} {row!r} has an empty label; give every image a class name")
        file = Path(row[0].strip())
        files.append((file if file.is_absolute() else path.parent / file, row[1].strip()))
    outside = [str(f) for f, _ in files if not _inside(f, path.parent)]
    if outside:  # allowed (a CSV may index a shared image store), but said, since it is easy to do by mistake
        log.warning("%s: %d paths lie outside the CSV's folder %s (e.g. %s)", path, len(outside), path.parent, outside[0])
    return files, sorted({label for _, label in files})


def _is_header(cell: str, folder: Path) -> bool:
    candidate = Path(cell) if Path(cell).is_absolute() else folder / cell
    return not candidate.exists() and Path(cell).suffix.lower() not in IMAGE_SUFFIXES


def _inside(file: Path, folder: Path) -> bool:
    return os.path.abspath(file).startswith(os.path.abspath(folder) + os.sep)


def _read_npz(path: Path, classes: Optional[list[str]]) -> ImageSet:
    arrays = read_arrays(path)
    images = _normalise_array(arrays["images"], path)
    labels = check_labels(arrays["labels"], len(images), path) if "labels" in arrays else np.full(len(images), -1, np.int64)
    names = [str(c) for c in np.atleast_1d(arrays["classes"])] if "classes" in arrays else None
    check_class_names(names, path)
    if names is None:
        names = classes or [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
    bad = sorted(set(labels[(labels < -1) | (labels >= len(names))].tolist()))
    if bad:
        raise GraftError(f"{path}: labels {bad[:10]} are outside the class list of {len(names)} classes; fix the labels or the 'classes' array")
    return ImageSet(classes=names, labels=labels, arrays=images, origin=str(path))


def _normalise_array(images: np.ndarray, path: Path) -> np.ndarray:
    """(N,H,W), (N,H,W,1|3|4) of uint8/uint16/float -> (N,H,W,3) uint8 (see :func:`graft.data.npz.normalise_images`)."""
    return normalise_images(images, path)


def load_images(source: str | Path | ImageSet, classes: Optional[list[str]] = None, labelled: bool = True) -> ImageSet:
    """Read ``source`` into an :class:`ImageSet`.

    ``classes``: the class list of the training set; a val/test set is re-indexed onto it,
    and a class name it does not know is an error. ``labelled=False`` drops all labels.
    """
    if isinstance(source, ImageSet):
        images = source
    else:
        path = Path(source)
        if not path.exists():
            raise GraftError(f"{path}: DATA does not exist; give {DATA_FORMS}")
        if path.is_dir() and (path / "Annotations").is_dir():
            from graft.data.annotations import read_voc

            images = read_voc(path, classes)
        elif path.suffix.lower() == ".json":
            from graft.data.annotations import read_coco

            images = read_coco(path, classes)
        elif path.is_dir():
            files, names = _read_folder(path)
            images = _files_to_set(files, names, str(path))
        elif path.suffix.lower() == ".csv":
            files, names = _read_csv(path)
            images = _files_to_set(files, names, str(path))
            images.outside = [str(f) for f, _ in files if not _inside(f, path.parent)]
        elif path.suffix.lower() == ".npz":
            images = _read_npz(path, classes)
        else:
            raise GraftError(f"{path}: unknown DATA form '{path.suffix}'; give {DATA_FORMS}")
        if len(images) == 0:
            raise GraftError(f"{path}: no readable images (skipped {len(images.skipped)}); give {DATA_FORMS}")
    if not labelled:
        return ImageSet(images.classes, np.full(len(images), -1, np.int64), images.arrays, images.paths, images.origin, images.skipped)
    if classes is not None and images.classes != classes and images.multilabel:
        from graft.data.annotations import reindex_multilabel

        return reindex_multilabel(images, classes)
    if classes is not None and images.classes != classes:
        images = _reindex(images, classes)
    return images


def _reindex(images: ImageSet, classes: list[str]) -> ImageSet:
    unknown = sorted(set(images.classes[i] for i in set(images.labels.tolist()) if i >= 0) - set(classes))
    if unknown:
        raise GraftError(f"{images.origin}: classes {unknown} are not among the training classes {classes}; remove them or retrain")
    mapping = np.array([classes.index(c) if c in classes else -1 for c in images.classes] + [-1], np.int64)
    return ImageSet(classes, mapping[images.labels], images.arrays, images.paths, images.origin, images.skipped)


def require_classes(images: ImageSet) -> None:
    """Refuse training sets with fewer than two classes present."""
    present = [c for c, n in images.class_counts().items() if n > 0]
    if len(present) < 2:
        raise GraftError(f"{images.origin}: found {len(present)} class(es) {present}; a classifier needs at least two")
