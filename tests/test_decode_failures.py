"""Files whose header passes the scan but whose body does not decode (issue 17): skipped, counted and named.

A JPEG cut to 60% of its bytes opens (its header is whole) and fails when decoded. Extraction, training (loader workers
or none) and prediction leave it out, the run completes, and model.json, metrics.jsonl and the report name it.
"""
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import graft
from graft.backbones import create_model
from graft.data.sources import load_images
from graft.data.transforms import resolve_preprocessing
from graft.errors import GraftError
from graft.features import cache_dir, cached_features, extract_features
from graft.placement import Placement
from graft.recipe import Recipe

from conftest import FAST, make_images

PRE = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.25,) * 3}


def write_jpegs(root: Path, n: int, seed: int = 0) -> Path:
    images, labels = make_images(n, 2, size=48, seed=seed)
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:03d}.jpg", quality=95)
    return root


def truncate(path: Path) -> Path:
    """Keep the first 60% of the file: the header is whole, the body ends early."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    with Image.open(path) as image:  # the header still reads: only decoding the pixels fails
        assert image.size == (48, 48)
        with pytest.raises(OSError):
            image.load()
    return path


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_model("graft_convnet_s", 2, pretrained=False).eval()


@pytest.mark.parametrize("workers", [0, 2])
def test_extraction_skips_a_file_that_does_not_decode_and_names_it(tmp_path, model, workers):
    bad = truncate(write_jpegs(tmp_path / "data", 24) / "class1" / "005.jpg")
    images = load_images(tmp_path / "data")
    assert len(images) == 24 and not images.skipped  # the header passes: the file is listed
    pre = resolve_preprocessing(PRE, Recipe().data)
    others = images.subset([i for i, path in enumerate(images.paths) if path != bad])
    expected = extract_features(model, others, pre, batch_size=8, channels_last=False, placement=Placement(num_workers=0))
    features = extract_features(model, images, pre, batch_size=8, channels_last=False, placement=Placement(num_workers=workers))
    assert features.shape == (23, model.num_features) and len(images) == 23 and bad not in images.paths
    assert [file for file, _ in images.skipped] == [str(bad)] and "cannot read image" in images.skipped[0][1]
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(images.labels, others.labels)  # rows and labels stay paired


def test_cached_features_name_the_skipped_file_without_decoding_again(tmp_path, model):
    bad = truncate(write_jpegs(tmp_path / "data", 16) / "class0" / "002.jpg")
    pre = resolve_preprocessing(PRE, Recipe().data)
    first_set = load_images(tmp_path / "data")
    first, cached = cached_features(model, first_set, pre, batch_size=8, channels_last=False, placement=Placement(num_workers=1))
    assert not cached and first.shape == (15, model.num_features)
    assert len(list((cache_dir() / "features").glob("*.skipped.json"))) == 1
    again_set = load_images(tmp_path / "data")
    again, cached = cached_features(model, again_set, pre, batch_size=8, channels_last=False)
    assert cached, "the entry with one skipped image is whole: reused, not taken for damaged"
    np.testing.assert_array_equal(again, first)
    assert again_set.skipped == first_set.skipped and [f for f, _ in again_set.skipped] == [str(bad)]
    assert again_set.paths == first_set.paths


def fit_with_truncated_files(tmp_path: Path, route: str, *overrides: str) -> tuple[graft.Run, Path, Path]:
    train_bad = truncate(write_jpegs(tmp_path / "train", 32) / "class0" / "004.jpg")
    test_bad = truncate(write_jpegs(tmp_path / "test", 12, seed=1) / "class1" / "003.jpg")
    run = graft.fit(tmp_path / "train", test=tmp_path / "test", route=route, backbone="graft_convnet_s", out=tmp_path / "run",
                    quiet=True, overrides=[*FAST, "model.pretrained=false", "data.val_fraction=0", "train.stages=all:2", *overrides])
    return run, train_bad, test_bad


def assert_named_and_counted(run: graft.Run, train_bad: Path, test_bad: Path) -> None:
    skipped = {entry["file"]: entry["reason"] for entry in run.meta["skipped_files"]}
    assert skipped.keys() == {str(train_bad), str(test_bad)} and run.meta["skipped_count"] == 2
    assert all("cannot read image" in reason for reason in skipped.values())
    counts = json.loads((run.path / "report_data.json").read_text())["data"]["counts"]
    assert sum(counts["train"].values()) == 31 and sum(counts["test"].values()) == 11  # the images that remain
    report = (run.path / "report.html").read_text()
    assert train_bad.name in report and test_bad.name in report
    # the test accuracy is that of the 11 test images that decode, as predict scores them one by one
    assert run.metrics["test_count"] == 11
    test_files = sorted(p for p in (run.path.parent / "test").rglob("*.jpg") if p != test_bad)
    predictions = graft.predict(run, test_files, top_k=1)
    hits = [p["top"][0]["class"] == Path(p["image"]).parent.name for p in predictions]
    assert len(hits) == 11 and run.metrics["test_accuracy"] == pytest.approx(np.mean(hits))


def test_linear_run_completes_and_names_files_that_do_not_decode(tmp_path):
    run, train_bad, test_bad = fit_with_truncated_files(tmp_path, "linear", "data.num_workers=1")
    assert run.meta["info"]["probe_images"] == 31
    assert_named_and_counted(run, train_bad, test_bad)


@pytest.mark.parametrize("workers", [0, 2])
def test_finetune_run_completes_and_names_files_that_do_not_decode(tmp_path, workers):
    run, train_bad, test_bad = fit_with_truncated_files(tmp_path, "finetune", f"data.num_workers={workers}")
    records = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    found = [r for r in records if r.get("event") == "skipped"]
    assert [(r["split"], [f["file"] for f in r["files"]]) for r in found] == [("train", [str(train_bad)])]
    epochs = [r for r in records if r.get("event") == "epoch"]
    assert len(epochs) == 2 and all(np.isfinite(e["train_loss"]) for e in epochs)
    assert_named_and_counted(run, train_bad, test_bad)


def test_predict_leaves_out_and_names_a_file_that_does_not_decode(tmp_path, caplog):
    write_jpegs(tmp_path / "data", 16)
    run = graft.fit(tmp_path / "data", route="linear", backbone="graft_convnet_s", out=tmp_path / "run", quiet=True,
                    overrides=[*FAST, "model.pretrained=false"])
    files = sorted((tmp_path / "data").rglob("*.jpg"))[:3]
    bad = truncate(files[1])
    with caplog.at_level(logging.WARNING, logger="graft"):
        results = graft.predict(run, files)
    assert [r["image"] for r in results] == [str(files[0]), str(files[2])]
    assert any(str(bad) in message and "cannot read image" in message for message in caplog.messages)
    with pytest.raises(GraftError, match="cannot read image") as error:  # the only image named: nothing to predict
        graft.predict(run, [bad])
    assert str(error.value).startswith(str(bad)) and "\n" not in str(error.value)


PATCHES = ["data.image_size=16", "patches.scales=2", "patches.max_windows=12", "adapt.hidden=16", "patches.epochs=3"]


@pytest.mark.parametrize("mode", ["cached window features", "window crops"])
def test_patches_run_completes_and_names_files_that_do_not_decode(tmp_path, mode):
    """The patches route decodes each image in this process to cut its windows: a file that fails is skipped there too,
    and the window rows of the others still point at their own images (evaluate agrees with the run)."""
    finetune = mode == "window crops"
    run, train_bad, test_bad = fit_with_truncated_files(tmp_path, "patches", *PATCHES, f"patches.finetune={str(finetune).lower()}",
                                                        "train.stages=new:1,all:1")
    assert run.meta["info"]["trained_on"] == mode
    assert_named_and_counted(run, train_bad, test_bad)
    assert graft.evaluate(run.path, tmp_path / "test").accuracy == pytest.approx(run.metrics["test_accuracy"])


def test_exemplar_seed_patches_skip_a_file_that_does_not_decode(tmp_path):
    """Exemplar-CNN draws its seed windows by decoding every image in this process: a file that fails is named, the
    windows index the images that remain, and the pretraining completes."""
    from graft.exemplar import sample_seed_patches
    from graft.recipe import ExemplarConfig

    bad = truncate(write_jpegs(tmp_path / "data", 12) / "class0" / "002.jpg")
    images = load_images(tmp_path / "data")
    seeds = sample_seed_patches(images, ExemplarConfig(classes=8, patch_size=16), seed=0)
    assert len(images) == 11 and [file for file, _ in images.skipped] == [str(bad)]
    for index, left, top, side in seeds.windows:  # each window lies inside the image it names, among those that remain
        height, width = images.image(int(index)).shape[:2]
        assert 0 <= index < 11 and left + side <= width and top + side <= height
    run = graft.pretrain(tmp_path / "data", "exemplar", "exemplar-64c5-64c5-128f", out=tmp_path / "ex", quiet=True,
                         overrides=["exemplar.classes=8", "exemplar.copies=4", "exemplar.val_copies=2", "exemplar.patch_size=16",
                                    "train.stages=all:1", "data.batch_size=16", "model.channels_last=false"])
    assert [entry["file"] for entry in run.meta["skipped_files"]] == [str(bad)] and run.meta["skipped_count"] == 1


def test_unlabelled_files_that_do_not_decode_are_named_apart_in_model_json(tmp_path):
    write_jpegs(tmp_path / "train", 32)
    bad = truncate(write_jpegs(tmp_path / "pool", 16, seed=2) / "class1" / "007.jpg")
    run = graft.fit(tmp_path / "train", route="spread", backbone="graft_convnet_s", out=tmp_path / "run", quiet=True,
                    overrides=[*FAST, "model.pretrained=false", f"data.unlabeled={tmp_path / 'pool'}"])
    assert [entry["file"] for entry in run.meta["unlabeled_skipped_files"]] == [str(bad)]
    assert run.meta["skipped_count"] == 0  # the labelled splits' count: every labelled file decoded
