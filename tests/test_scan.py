"""graft.data.scan: header-only checks in parallel, cached by (size, mtime); bombs and broken files refused by name."""
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from graft.caches import cache_dir
from graft.data.scan import MAX_PIXELS, scan_cache_file, scan_files


def write_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"{index:03d}.jpg"
        Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def png_header(path: Path, width: int, height: int) -> Path:
    """A small PNG whose header declares width x height pixels (its pixel data is empty)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def test_broken_files_and_bombs_are_refused_by_name_the_rest_kept_in_order(tmp_path):
    good = write_images(tmp_path / "good", 4)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    side = int(MAX_PIXELS ** 0.5) + 10  # just over the limit: PIL itself would only warn
    bomb = png_header(tmp_path / "bomb.png", side, side)
    huge = png_header(tmp_path / "huge.png", 100_000, 100_000)  # over twice the limit: PIL refuses at open
    scan = scan_files([good[0], broken, good[1], bomb, good[2], huge, good[3]])
    assert scan.usable == good
    reasons = dict(scan.skipped)
    assert list(reasons) == [str(broken), str(bomb), str(huge)]
    assert "not a readable image" in reasons[str(broken)]
    assert f"{side}x{side}" in reasons[str(bomb)] and "decompression bomb" in reasons[str(bomb)]
    assert "decompression bomb" in reasons[str(huge)]


def test_a_second_scan_opens_only_what_changed(tmp_path):
    paths = write_images(tmp_path / "images", 6)
    cache = tmp_path / "cache" / "scan.json"
    first = scan_files(paths, cache_file=cache)
    assert (first.opened, first.from_cache, len(first.usable)) == (6, 0, 6)
    second = scan_files(paths, cache_file=cache)
    assert (second.opened, second.from_cache, second.usable) == (0, 6, paths)
    paths[2].write_bytes(b"broken now")  # size and mtime change: checked again, and now refused
    third = scan_files(paths, cache_file=cache)
    assert (third.opened, third.from_cache) == (1, 5)
    assert [file for file, _ in third.skipped] == [str(paths[2])] and len(third.usable) == 5


def test_parallel_scan_finds_what_the_serial_one_finds(tmp_path):
    paths = write_images(tmp_path / "images", 40)
    paths[7].write_bytes(b"broken")
    serial = scan_files(paths, workers=1)
    parallel = scan_files(paths, workers=2, parallel_above=0)
    assert parallel.usable == serial.usable and parallel.skipped == serial.skipped and len(serial.skipped) == 1


def test_a_second_listing_of_an_unchanged_folder_opens_no_file(tmp_path, monkeypatch):
    """load_images checks folders, CSVs and annotation sets through the scan cache (under $GRAFT_CACHE, set per test):
    counted at PIL's Image.open, which the header check calls once per file it opens."""
    from graft.data.sources import load_images

    for name in ("cat", "dog"):
        write_images(tmp_path / "data" / name, 3)
    (tmp_path / "data" / "dog" / "broken.jpg").write_bytes(b"not an image")
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *args, **kwargs: opened.append(Path(path).name) or real_open(path, *args, **kwargs))
    first = load_images(tmp_path / "data")
    assert len(first) == 6 and [Path(file).name for file, _ in first.skipped] == ["broken.jpg"]
    assert first.headers == (7, 0) and len(opened) == 7
    opened.clear()
    second = load_images(tmp_path / "data")
    assert opened == [] and second.headers == (0, 7)  # nothing opened, not even the broken file
    assert second.paths == first.paths and second.skipped == first.skipped
    touched = tmp_path / "data" / "cat" / "001.jpg"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 1_000_000))
    third = load_images(tmp_path / "data")
    assert opened == ["001.jpg"] and third.headers == (1, 6) and third.paths == first.paths
    assert list((cache_dir() / "scan").glob("*.json")) == [scan_cache_file(tmp_path / "data")]  # under graft's cache folder


def test_a_cache_folder_that_cannot_be_written_only_costs_the_cache(tmp_path):
    paths = write_images(tmp_path / "images", 3)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder would go")
    scan = scan_files(paths, cache_file=blocker / "scan.json")
    assert scan.usable == paths and scan.opened == 3
