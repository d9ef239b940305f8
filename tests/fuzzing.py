"""Helpers shared by the fuzz suites (tests/test_fuzz_inputs.py, tests/test_fuzz_runs.py): tiny files, the CLI run
in-process, and the one assertion every refused input must pass."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.cli import main

from conftest import make_images

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = ["--route", "scratch", "--backbone", "graft_convnet_s", "--image-size", "16", "--stages", "all:1", "--quiet",
        "--set", "train.min_steps=0", "--set", "model.channels_last=false", "--augment", "none"]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code if isinstance(exit_info.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def partials(root: Path) -> set[Path]:
    return set(root.rglob(".*.partial"))


def assert_one_line_error(code: int, err: str, names: str) -> None:
    """Exit 2, exactly one `graft: error:` line (the last one) naming ``names``, no traceback."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("graft: error:")]
    assert code == 2 and len(errors) == 1, err
    assert err.strip().splitlines()[-1] == errors[0], err
    assert names in errors[0], (names, errors[0])


def write_npz(path: Path, **arrays: object) -> Path:
    np.savez(path, **arrays)
    return path


def toy(path: Path, n: int = 36, classes: int = 3) -> Path:
    images, labels = make_images(n, classes)
    return write_npz(path, images=images, labels=labels, classes=np.array(["red", "green", "blue"][:classes]))


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels (a decompression bomb: PIL refuses to decode it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def image_folder(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 6) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(np.full((16, 16, 3), 30 + 180 * c + i, np.uint8)).save(root / name / f"{i}.png")
    return root


def images_of(n: int = 12, dtype: object = np.uint8) -> np.ndarray:
    return make_images(n, 3)[0].astype(dtype)


def labels_of(n: int = 12) -> np.ndarray:
    return np.arange(n) % 3


def bomb(path: Path) -> Path:
    path.write_bytes(png_header(20000, 20000))
    return path


def png(folder: Path) -> Path:
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "x.png")
    return folder / "x.png"


def broken(path: Path) -> Path:
    path.write_bytes(b"\x89PNG broken")
    return path
