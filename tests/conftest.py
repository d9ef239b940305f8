"""Tiny synthetic images, offline hub, a private feature cache: the suite runs anywhere on CPU in minutes."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(os.environ.get("GRAFT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MOBILENET_TIMM = SHARED / "weights" / "mobilenetv2_100.imagenet.timm.safetensors"
MOBILENET_TV = SHARED / "weights" / "mobilenet_v2.imagenet.safetensors"
needs_shared = pytest.mark.skipif(not MOBILENET_TIMM.exists(), reason=f"../shared assets not found at {SHARED}")

# small fast settings every training test shares (epochs as given: tests that check the train.min_steps stretch set it)
FAST = ["data.image_size=16", "model.channels_last=false", "data.batch_size=16", "train.augment.preset=none", "train.warmup_epochs=0",
        "train.min_steps=0"]


class Interrupt:
    """Stops training (as Ctrl-C does) after ``after`` epochs."""

    def __init__(self, after: int) -> None:
        self.after, self.seen = after, 0

    def __call__(self, record):
        self.seen += 1
        if self.seen == self.after:
            raise KeyboardInterrupt


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GRAFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    # one thread per pytest-xdist worker (`make test` runs one per core), else two
    torch.set_num_threads(int(os.environ.get("GRAFT_THREADS", "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2")))


def make_images(n: int = 90, classes: int = 3, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Separable images: class c is noise plus a bright channel c and a class-specific stripe."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = rng.integers(0, 70, (n, size, size, 3)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, :, :, label % 3] += 120
        images[i, (label * size) // classes: ((label + 1) * size) // classes, :, :] = 250
    return images, labels


@pytest.fixture
def toy_npz(tmp_path: Path) -> Path:
    images, labels = make_images()
    path = tmp_path / "toy.npz"
    np.savez(path, images=images, labels=labels, classes=np.array(["red", "green", "blue"]))
    return path


@pytest.fixture
def source_run(toy_npz: Path, tmp_path: Path):
    """A small source network trained from scratch on the toy data: the 'pretrained' backbone of many tests."""
    import graft

    return graft.fit(toy_npz, route="scratch", backbone="graft_convnet_s", out=tmp_path / "source", quiet=True,
                     overrides=[*FAST, "train.stages=all:3"])
