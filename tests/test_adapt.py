"""Route adapt (frozen representation + FCa/FCb) and multi-label training on generated scenes."""
import pytest
import torch
from safetensors.torch import load_file

import graft
from graft.data.sources import load_images
from graft.errors import GraftError
from graft.heads import AdaptationHead
from graft.scene_builder import SceneSpec, build_scenes

from conftest import FAST

SCENE_FAST = [*FAST, "data.image_size=32"]


@pytest.fixture
def scene_sets(toy_npz, tmp_path):
    build_scenes(toy_npz, tmp_path / "train", SceneSpec(count=48, size=48, object_size=(0.4, 0.7), seed=0))
    build_scenes(toy_npz, tmp_path / "test", SceneSpec(count=24, size=48, object_size=(0.4, 0.7), seed=1))
    return tmp_path / "train", tmp_path / "test"


def chance_map(test) -> float:
    """mAP of a scorer that knows nothing: each class's AP is then its positive rate."""
    targets = load_images(test).targets
    return float(targets.mean(0).mean())


def test_adapt_on_scenes_beats_chance_keeps_backbone_and_reloads(scene_sets, source_run, tmp_path, capsys):
    train, test = scene_sets
    run = graft.fit(train, test=test, route="adapt", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "a",
                    quiet=True, overrides=SCENE_FAST)
    assert run.metrics["test_mAP"] > chance_map(test) + 0.25
    assert run.meta["multilabel"] and run.meta["info"]["trained_on"] == "cached features"
    assert run.meta["info"]["backbone_unchanged"] is True
    before, after = load_file(str(source_run.path / "model.safetensors")), load_file(str(run.path / "model.safetensors"))
    for key, tensor in before.items():
        if not key.startswith("head."):
            assert torch.equal(tensor, after[key]), key
    assert isinstance(run.model.head, AdaptationHead) and run.model.head[0].out_features == 2048
    evaluation = graft.evaluate(run.path, test / "annotations.json")  # COCO form of the same test scenes
    assert evaluation.mean_ap == pytest.approx(run.metrics["test_mAP"], abs=1e-5)
    from graft.cli import main

    main(["evaluate", str(run.path), str(test)])
    out = capsys.readouterr().out
    assert "AP" in out and all(f"{ap:.4f}" in out for ap in evaluation.per_class_ap.values())


def test_adapt_single_label_from_cache_and_through_images(toy_npz, source_run, tmp_path):
    first = graft.fit(toy_npz, route="adapt", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "c1",
                      quiet=True, overrides=[*FAST, "adapt.hidden=64"])
    second = graft.fit(toy_npz, route="adapt", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "c2",
                       quiet=True, overrides=[*FAST, "adapt.hidden=64"])
    assert first.metrics["test_accuracy"] > 0.6 and second.metrics["test_accuracy"] == first.metrics["test_accuracy"]
    events = [line for line in (second.path / "metrics.jsonl").read_text().splitlines() if '"features"' in line]
    assert events and all('"cached": true' in e for e in events)
    images = graft.fit(toy_npz, route="adapt", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "img",
                       quiet=True, overrides=[*FAST, "adapt.hidden=64", "adapt.augment=true", "adapt.epochs=3", "train.augment.preset=flip"])
    assert images.meta["info"]["trained_on"] == "images" and images.meta["info"]["backbone_unchanged"] is True


def test_multilabel_finetune_through_the_loop(scene_sets, source_run, tmp_path):
    train, test = scene_sets
    run = graft.fit(train, test=test, route="finetune", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "ft",
                    quiet=True, overrides=[*SCENE_FAST, "train.stages=new:2,all:2"])
    assert run.metrics["test_mAP"] > chance_map(test) + 0.2
    scores = graft.predict(run.path, [str(p) for p in sorted((test / "JPEGImages").glob("*.png"))[:2]], top_k=3)
    assert all(0 <= t["probability"] <= 1 for s in scores for t in s["top"])


def test_linear_refuses_multilabel_data(scene_sets, source_run, tmp_path):
    train, test = scene_sets
    with pytest.raises(GraftError, match="several labels per image"):
        graft.fit(train, test=test, route="linear", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "l",
                  quiet=True, overrides=SCENE_FAST)
