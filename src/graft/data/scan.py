"""Header-only, parallel, cached checks of image files: listing a folder of 100k JPEGs takes seconds, not minutes.

Opening an image with PIL reads its header alone (format, size, mode); decoding the body is left to the loader
workers, which decode every image anyway. Measured on 2 cores (issue 17): 5,000 JPEGs of 384 px took 8.8 s to
decode fully, 0.41 s to open by header. Results are cached per file under its (size, mtime) so a second run opens
nothing that did not change. A header that declares more pixels than :data:`MAX_PIXELS` (a decompression bomb) is
refused by name before anything is decoded.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image, UnidentifiedImageError

from graft.caches import cache_dir

MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # PIL's own bomb limit (about 0.25 GB of RGB)
PARALLEL_ABOVE = 2_000  # fewer files are opened in this process: a pool's start-up would cost more than it saves
BOMB_HINT = "a decompression bomb? resize it, or remove it from the data"

log = logging.getLogger("graft")


def header_problem(path: str | Path) -> Optional[str]:
    """Why ``path`` is not a usable image judging by its header alone, or None when it is."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, by name, with the reason
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError as error:  # PIL refuses twice its limit at open
        return bomb_reason(path, str(error))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        return f"not a readable image ({type(error).__name__}: {error})"
    if width * height > MAX_PIXELS:
        return bomb_reason(path, size=(width, height))
    if width == 0 or height == 0:
        return f"declares an empty {width}x{height} image"
    return None


def bomb_reason(path: str | Path, detail: str = "", size: Optional[tuple[int, int]] = None) -> str:
    """Why a file whose header declares too many pixels is refused, naming its declared width x height when readable."""
    size = size or declared_size(Path(path))
    if size is None:
        return f"declares too many pixels ({detail}); {BOMB_HINT}"
    return f"declares {size[0]}x{size[1]} pixels, over the {MAX_PIXELS:,} limit; {BOMB_HINT}"


def declared_size(path: Path) -> Optional[tuple[int, int]]:
    """Width and height from the file's header, read by PIL's format plugins without Image.open's size check."""
    Image.init()
    with path.open("rb") as handle:
        prefix = handle.read(16)
        for name in Image.ID:
            factory, accept = Image.OPEN[name]
            if accept is not None and not accept(prefix):
                continue
            handle.seek(0)
            with contextlib.suppress(Exception):
                return factory(handle, str(path)).size
    return None


def scan_cache_file(origin: str | Path) -> Path:
    """The scan cache of one data source (a folder, CSV or annotation file): one file per source, so runs on different
    data never rewrite each other's entries."""
    key = hashlib.sha256(str(Path(origin).resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "scan" / f"{key}.json"


def _problems(paths: Sequence[str]) -> list[Optional[str]]:
    return [header_problem(path) for path in paths]


@dataclass
class Scan:
    """The files whose headers are fine, those refused (file, reason), and how many were opened or taken from the cache."""

    usable: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    opened: int = 0
    from_cache: int = 0


def _read_cache(path: Optional[Path]) -> dict[str, list]:
    if path is None or not path.exists():
        return {}
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):  # a damaged cache is only a slower scan
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_cache(path: Path, cache: dict[str, list]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
            json.dump(cache, handle)
        os.replace(handle.name, path)  # atomic: a concurrent reader sees the old cache or the new one
    except OSError as error:  # a read-only or full cache folder only makes the next scan slower
        log.warning("scan cache %s not written (%s); the next listing checks every file again", path, error)


def scan_files(paths: Sequence[str | Path], cache_file: Optional[Path] = None, workers: Optional[int] = None,
               parallel_above: int = PARALLEL_ABOVE) -> Scan:
    """Check every file of ``paths`` by its header, in ``workers`` processes (default: the usable cores) when there are
    more than ``parallel_above`` to open; with ``cache_file``, files whose (size, mtime) it records are not opened again
    and it is rewritten (atomically) with what was found, when that changed. Order is kept in :attr:`Scan.usable`; a
    file that does not exist is refused as "file not found"."""
    cache = _read_cache(cache_file)
    keys, stamps, problems = [], [], {}
    for path in paths:
        key = os.fspath(path)
        key = key if os.path.isabs(key) else os.path.abspath(key)  # no system call (resolve() lstats every component)
        keys.append(key)
        try:
            stat = os.stat(key)
        except OSError:  # gone since it was listed (or a dangling link): nothing to open, nothing to cache
            stamps.append(None)
            problems[key] = "file not found"
            continue
        stamps.append([stat.st_size, stat.st_mtime_ns])
        entry = cache.get(key)
        if isinstance(entry, list) and len(entry) == 3 and entry[:2] == stamps[-1]:
            problems[key] = entry[2]
    scan = Scan(from_cache=sum(stamp is not None for stamp, key in zip(stamps, keys) if key in problems))
    todo = [key for key in keys if key not in problems]
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if len(todo) > parallel_above and workers > 1:
        chunk = max(64, len(todo) // (workers * 8))  # several chunks a worker: an uneven chunk does not hold the rest up
        with ProcessPoolExecutor(workers) as pool:
            found = [problem for part in pool.map(_problems, [todo[i:i + chunk] for i in range(0, len(todo), chunk)]) for problem in part]
    else:
        found = _problems(todo)
    problems.update(zip(todo, found))
    scan.opened = len(todo)
    for path, key in zip(paths, keys):
        if problems[key] is None:
            scan.usable.append(path)
        else:
            scan.skipped.append((str(path), problems[key]))
    if cache_file is not None:
        # the listing as it is now: files removed since the last scan leave the cache with it
        current = {key: [*stamp, problems[key]] for key, stamp in zip(keys, stamps) if stamp is not None}
        if current != cache:
            _write_cache(cache_file, current)
    return scan


__all__ = ["MAX_PIXELS", "Scan", "bomb_reason", "declared_size", "header_problem", "scan_cache_file", "scan_files"]
