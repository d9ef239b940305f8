"""Scale (issue 17): loader workers, preallocated / memory-mapped outputs, sharded extraction under DDP, threads.

Behaviour only: the speed of these paths is measured by bench/throughput.py, never here.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import graft
from graft.backbones import create_model
from graft.data.sources import load_images
from graft.data.transforms import TransformedImages, eval_transform, resolve_preprocessing
from graft.features import cache_dir, extract_features, map_batches, pooled_features
from graft.placement import MAX_WORKERS, Placement, default_threads, default_workers, usable_cores
from graft.recipe import Recipe

from conftest import FAST, make_images

PRE = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.25,) * 3}


def write_folder(root: Path, n: int = 40) -> Path:
    images, labels = make_images(n, 2, size=20)
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:03d}.png")
    return root


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_model("graft_convnet_s", 2, pretrained=False).eval()


def test_features_identical_with_and_without_loader_workers(tmp_path, model):
    images = load_images(write_folder(tmp_path / "folder"))
    pre = resolve_preprocessing(PRE, Recipe().data)
    two = Placement(num_workers=2)
    assert two.loader(TransformedImages(images, eval_transform(pre)), 8).num_workers == 2  # 5 batches: both workers run
    in_process = extract_features(model, images, pre, batch_size=8, channels_last=False, placement=Placement(num_workers=0))
    in_workers = extract_features(model, images, pre, batch_size=8, channels_last=False, placement=two)
    assert in_process.shape == (40, model.num_features)
    np.testing.assert_array_equal(in_workers, in_process)


def test_default_worker_rule_reads_files_in_workers_and_arrays_in_process(tmp_path, toy_npz):
    # the rule: nothing to decode in memory; otherwise the cores left over after the model's processes, at most 8
    assert default_workers(in_memory=True, cores=64) == 0
    assert default_workers(in_memory=False, cores=2) == 1
    assert default_workers(in_memory=False, cores=1) == 0
    assert default_workers(in_memory=False, cores=64) == MAX_WORKERS
    assert default_workers(in_memory=False, cores=8, processes=2) == 3
    pre = eval_transform(resolve_preprocessing(PRE, Recipe().data))
    files = TransformedImages(load_images(write_folder(tmp_path / "folder")), pre)
    arrays = TransformedImages(load_images(toy_npz), pre)
    assert Placement().workers(arrays) == 0
    assert Placement().workers(files) == default_workers(False, usable_cores())
    assert Placement(num_workers=4).workers(files, batches=2) == 2  # no worker without a batch to decode
    loader = Placement(num_workers=1).loader(files, 8, persistent=True)
    assert loader.persistent_workers and loader.num_workers == 1 and not loader.pin_memory  # pinned only on CUDA


def test_fine_tune_on_a_folder_with_a_loader_worker(tmp_path):
    run = graft.fit(write_folder(tmp_path / "folder"), route="scratch", backbone="graft_convnet_s", out=tmp_path / "run", quiet=True,
                    overrides=[*FAST, "train.stages=all:2", "data.num_workers=1"])
    records = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r.get("event") == "epoch"]
    assert len(epochs) == 2 and all(np.isfinite(e["train_loss"]) for e in epochs)
    assert run.meta["recipe"]["data"]["num_workers"] == 1


def test_large_outputs_go_to_a_memory_mapped_file_with_the_same_values(toy_npz, model):
    images = load_images(toy_npz)
    pre = resolve_preprocessing(PRE, Recipe().data)
    function = lambda batch: pooled_features(model, batch)  # noqa: E731
    in_memory = map_batches(model, images, pre, function, batch_size=32, channels_last=False)
    mapped = map_batches(model, images, pre, function, batch_size=32, channels_last=False, memmap_bytes=1024)
    assert not isinstance(in_memory, np.memmap) and isinstance(mapped, np.memmap)
    assert Path(mapped.filename).parent == cache_dir() / "scratch"
    np.testing.assert_array_equal(mapped, in_memory)
    assert list((cache_dir() / "scratch").iterdir()) == []  # unlinked at once: nothing is left behind


def test_thread_default_shares_the_usable_cores_among_ranks():
    assert default_threads(cores=8) == 8
    assert default_threads(cores=8, processes=2) == 4
    assert default_threads(cores=2, processes=4) == 1
    assert default_threads(cores=8, ceiling=4) == 4  # never above torch's own default (OMP_NUM_THREADS, physical cores)


def test_importing_the_command_module_leaves_the_environment_alone(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    import graft.__main__  # noqa: F401 - a program importing graft's modules

    assert "OMP_WAIT_POLICY" not in os.environ


def features_events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"features"' in line]


def test_two_process_ddp_extraction_shards_and_matches_one_process(tmp_path):
    images, labels = make_images(64, 2)
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    common = ["--route", "linear", "--backbone", "graft_convnet_s", "--accelerator", "cpu", "--quiet", "--image-size", "16",
              "--set", "model.channels_last=false", "--set", "model.pretrained=false"]
    single = graft.fit(tmp_path / "d.npz", route="linear", backbone="graft_convnet_s", out=tmp_path / "one", quiet=True,
                       overrides=["data.image_size=16", "model.channels_last=false", "model.pretrained=false", "runtime.accelerator=cpu"])
    # no --threads and no OMP settings: the command chooses (1 thread a rank on 2 cores) and sets OMP_WAIT_POLICY
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env["GRAFT_CACHE"] = str(tmp_path / "ddp_cache")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(graft.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])  # this graft
    command = [sys.executable, "-m", "graft", "fit", str(tmp_path / "d.npz"), *common, "--strategy", "ddp", "--devices", "2",
               "--out", str(tmp_path / "ddp")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]

    one_files = sorted((cache_dir() / "features").glob("*.npy"))
    ddp_files = sorted((tmp_path / "ddp_cache" / "features").glob("*.npy"))
    assert [f.name for f in ddp_files] == [f.name for f in one_files] and len(one_files) == 3  # train, val, test: one file each
    assert not list((tmp_path / "ddp_cache" / "features").glob("*.tmp"))
    for ddp_file, one_file in zip(ddp_files, one_files):
        np.testing.assert_allclose(np.load(ddp_file), np.load(one_file), rtol=1e-5, atol=1e-6)

    events = features_events(tmp_path / "ddp")
    assert len(events) == 3
    for event in events:
        assert sum(event["images_per_rank"]) == event["images"] and max(event["images_per_rank"]) - min(event["images_per_rank"]) <= 1
        assert event["images_this_rank"] == event["images_per_rank"][0]
    assert [e["images_per_rank"] for e in features_events(single.path)] == [[e["images"]] for e in events]
    assert json.loads((tmp_path / "ddp" / "model.json").read_text())["metrics"]["test_accuracy"] == single.metrics["test_accuracy"]
    device = next(json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines() if '"device"' in line)
    assert device["omp_wait_policy"] == "PASSIVE" and device["threads"] <= max(1, usable_cores() // 2)
