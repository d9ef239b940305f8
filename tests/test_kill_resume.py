"""A run killed with SIGKILL anywhere resumes to the same weights and the same model.json as an uninterrupted run.

`graft fit` runs as a real subprocess under a small launcher (written below, never part of graft) that installs a
Python audit hook (PEP 578): the hook sees every file ``open`` and ``os.rename`` the process makes and sends the
process SIGKILL at a chosen one, so the kill lands at the same point every time:

- ``epoch``: at the 5th image read after the 'initial' record (training batches of the first epoch, before any checkpoint);
- ``extraction``: at the 5th image read after ``data.json`` (lpft extracting the probe's features, before any cache entry);
- ``rename``: at ``checkpoint.tmp -> checkpoint`` once ``checkpoint -> checkpoint.old`` has happened, i.e. between the two
  renames of ``RunDirectory.save_checkpoint``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import make_images

SRC = Path(__file__).resolve().parents[1] / "src"
LAUNCHER = '''
import os, signal, sys
mode = sys.argv.pop(1)
MAIN = os.getpid()  # loader workers (forked, hook and counters copied) read the images: they kill the run's main process
seen = {"log": 0, "data": False, "images": 0, "old": False}

def hook(event, args):
    if event == "open" and isinstance(args[0], str):
        path = args[0]
        if path.endswith("metrics.jsonl"):
            seen["log"] += 1
        elif path.endswith("data.json.tmp"):
            seen["data"] = True
        elif path.endswith(".png") and args[1] == "r":
            armed = (mode == "epoch" and seen["log"] >= 2) or (mode == "extraction" and seen["data"])
            seen["images"] += armed
            if armed and seen["images"] == 5:
                os.kill(MAIN, signal.SIGKILL)
    elif event == "os.rename" and mode == "rename":
        source, target = str(args[0]), str(args[1])
        if source.endswith("checkpoint") and target.endswith("checkpoint.old"):
            seen["old"] = True
        elif seen["old"] and source.endswith("checkpoint.tmp") and target.endswith("checkpoint"):
            os.kill(MAIN, signal.SIGKILL)

if mode != "none":
    sys.addaudithook(hook)
from graft.cli import main
main(sys.argv[1:])
'''


def launch(tmp_path: Path, mode: str, *args: object, cache: str = "cache") -> subprocess.CompletedProcess:
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    environment = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                   "GRAFT_CACHE": str(tmp_path / cache)}
    return subprocess.run([sys.executable, str(launcher), mode, *map(str, args)], cwd=tmp_path, env=environment,
                          capture_output=True, text=True, timeout=600)


def image_folder(root: Path) -> Path:
    images, labels = make_images(24, 2, size=16)
    for index, (image, label) in enumerate(zip(images, labels)):
        (root / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / f"class{label}" / f"{index}.png")
    return root


ROUTES = {
    "scratch": ["--route", "scratch", "--stages", "all:3", "--augment", "flip"],
    "lpft": ["--route", "lpft", "--no-pretrained", "--stages", "all:2", "--augment", "flip"],
}
COMMON = ["--backbone", "graft_convnet_s", "--image-size", "16", "--batch-size", "8", "--threads", "1", "--quiet",
          "--set", "train.min_steps=0", "--set", "model.channels_last=false"]


def without_seconds(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> Callable[[str], tuple[Path, Path]]:
    """Per route: (its image folder, an uninterrupted run on it), made lazily once for the module."""
    made: dict[str, tuple[Path, Path]] = {}
    root = tmp_path_factory.mktemp("references")

    def reference(route: str) -> tuple[Path, Path]:
        if route not in made:
            data = image_folder(root / "images") if not (root / "images").exists() else root / "images"
            # its own feature cache: a killed run must extract, not find the reference's features
            whole = launch(root, "none", "fit", data, *ROUTES[route], *COMMON, "--out", root / route, cache=f"cache-{route}")
            assert whole.returncode == 0, whole.stderr
            made[route] = (data, root / route)
        return made[route]

    return reference


@pytest.mark.parametrize("mode,route", [("epoch", "scratch"), ("rename", "scratch"), ("extraction", "lpft")])
def test_sigkill_then_resume_equals_uninterrupted(mode, route, references, tmp_path):
    data, whole = references(route)
    killed = launch(tmp_path, mode, "fit", data, *ROUTES[route], *COMMON, "--out", tmp_path / "cut")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    work = tmp_path / ".cut.partial"
    assert work.is_dir() and not (tmp_path / "cut").exists()
    if mode == "epoch":  # killed before the first checkpoint
        assert not any(work.glob("checkpoint*"))
    if mode == "rename":  # killed between the renames: no checkpoint, a complete checkpoint.tmp and the old one
        assert not (work / "checkpoint").exists() and (work / "checkpoint.tmp" / "state.json").exists()
        assert (work / "checkpoint.old").exists()
    if mode == "extraction":  # killed before the features were cached
        assert not list((tmp_path / "cache").rglob("*.npy"))

    resumed = launch(tmp_path, "none", "fit", "--resume", tmp_path / "cut")
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    meta_a = json.loads((whole / "model.json").read_text())
    meta_b = json.loads((tmp_path / "cut" / "model.json").read_text())
    assert without_seconds([meta_a["metrics"]]) == without_seconds([meta_b["metrics"]])
    assert without_seconds(meta_a["history"]) == without_seconds(meta_b["history"])  # the whole run's epochs
    assert len(meta_b["history"]) == (3 if route == "scratch" else 2)
    # seconds cover every process: at least the epochs' own seconds, those of the killed process included
    assert meta_b["metrics"]["seconds"] >= sum(h["seconds"] for h in meta_b["history"])


def test_resume_from_another_folder(tmp_path, monkeypatch):
    """recipe.yaml keeps absolute data paths: a run started with a relative path resumes from anywhere."""
    import graft

    images, labels = make_images(30, 3)
    np.savez(tmp_path / "d.npz", images=images, labels=labels)

    def interrupt(record: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # conftest runs each test inside tmp_path: "d.npz" is relative to it
        graft.fit("d.npz", route="scratch", backbone="graft_convnet_s", out="cut", quiet=True, callbacks=[interrupt],
                  overrides=["data.image_size=16", "model.channels_last=false", "train.min_steps=0", "train.stages=all:2"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = graft.fit(resume=tmp_path / "cut", quiet=True)
    assert run.meta["recipe"]["data"]["train"] == str(tmp_path / "d.npz") and len(run.meta["history"]) == 2


def test_corrupt_cache_entry_is_repaired(tmp_path, caplog):
    """A damaged feature-cache entry (truncated, other shape, object array) is reported, deleted and re-extracted."""
    import graft

    images, labels = make_images(30, 3)
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    common = dict(route="linear", backbone="graft_convnet_s", quiet=True,
                  overrides=["data.image_size=16", "model.pretrained=false", "model.channels_last=false"])
    first = graft.fit(tmp_path / "d.npz", out=tmp_path / "first", **common)
    entries = sorted((tmp_path / "cache" / "features").glob("*.npy"))
    assert entries
    good = {entry: entry.read_bytes() for entry in entries}
    damages = [lambda e: e.write_bytes(good[e][: len(good[e]) // 2]),
               lambda e: np.save(e, np.zeros((3, 7), np.float32)),
               lambda e: np.save(e, np.array([None, 1], dtype=object), allow_pickle=True)]
    for number, damage in enumerate(damages):
        damage(entries[0])
        caplog.clear()
        again = graft.fit(tmp_path / "d.npz", out=tmp_path / f"again{number}", **common)
        assert f"feature cache entry {entries[0]} is damaged" in caplog.text
        assert entries[0].read_bytes() == good[entries[0]]  # extracted again, the same features
        assert again.metrics["test_accuracy"] == first.metrics["test_accuracy"]


def test_val_accuracy_is_that_of_the_returned_model(tmp_path):
    """lpft keeps its probe when no epoch beats it on validation: val_accuracy is then the probe's, at epoch 0."""
    import graft

    images, labels = make_images(60, 3)
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    run = graft.fit(tmp_path / "d.npz", route="lpft", backbone="graft_convnet_s", out=tmp_path / "r", quiet=True,
                    overrides=["data.image_size=16", "model.pretrained=false", "model.channels_last=false", "train.min_steps=0",
                               "train.stages=all:2", "train.lr=3", "train.augment.preset=none"])  # lr 3 wrecks the probe
    records = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    initial = next(r for r in records if r["event"] == "initial")
    assert run.metrics["returned_epoch"] == 0 and run.metrics["val_accuracy"] == initial["val_accuracy"]
    assert all(h["val_accuracy"] <= initial["val_accuracy"] for h in run.meta["history"])
