"""Multi-label data (Pascal VOC XML, COCO JSON), the scene builder, and per-class AP / mAP."""
import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from graft.data.sources import load_images
from graft.errors import GraftError
from graft.multilabel import average_precision, evaluate_scores
from graft.scene_builder import SceneSpec, build_scenes


@pytest.fixture
def scenes(toy_npz, tmp_path):
    build_scenes(toy_npz, tmp_path / "scenes", SceneSpec(count=12, size=40, object_size=(0.3, 0.6), objects_per_scene=(0, 3), seed=3))
    return tmp_path / "scenes"


def test_average_precision_equals_scikit_learn_including_ties():
    rng = np.random.default_rng(0)
    targets = (rng.random((40, 4)) < 0.3).astype(np.float32)
    scores = np.round(rng.random((40, 4)) + targets * 0.5, 1)  # rounding makes ties
    for c in range(4):
        assert average_precision(scores[:, c], targets[:, c]) == pytest.approx(average_precision_score(targets[:, c], scores[:, c]), abs=1e-12)
    evaluation = evaluate_scores(scores, targets, list("abcd"))
    assert evaluation.mean_ap == pytest.approx(average_precision_score(targets, scores, average="macro"), abs=1e-12)
    perfect = evaluate_scores(targets * 2 - 1, targets, list("abcd"))
    assert perfect.mean_ap == 1.0


def test_class_without_positives_has_no_ap_and_is_left_out():
    targets = np.array([[1, 0], [0, 0], [1, 0]], np.float32)
    evaluation = evaluate_scores(np.array([[0.9, 0.1], [0.2, 0.5], [0.4, 0.3]]), targets, ["a", "b"])
    assert np.isnan(evaluation.per_class_ap["b"]) and evaluation.mean_ap == 1.0


def test_voc_and_coco_readers_agree_on_the_same_scenes(scenes):
    voc, coco = load_images(scenes), load_images(scenes / "annotations.json")
    assert voc.classes == coco.classes == ["red", "green", "blue"] and len(voc) == len(coco) == 12
    assert [p.name for p in voc.paths] == [p.name for p in coco.paths]
    assert np.array_equal(voc.targets, coco.targets) and np.array_equal(voc.labels, coco.labels)
    for a, b in zip(voc.boxes, coco.boxes):
        assert np.array_equal(a, b)
    summary = json.loads((scenes / "scenes.json").read_text())
    assert sum(len(b) for b in voc.boxes) == summary["objects"] > 0
    empty = [i for i, b in enumerate(voc.boxes) if len(b) == 0]
    assert empty and all(voc.targets[i].sum() == 0 and voc.labels[i] == -1 for i in empty)  # kept as all-background


def test_scenes_are_seeded_and_respect_the_size_range(toy_npz, tmp_path):
    spec = SceneSpec(count=5, size=64, object_size=(0.25, 0.5), seed=7)
    build_scenes(toy_npz, tmp_path / "a", spec)
    build_scenes(toy_npz, tmp_path / "b", spec)
    assert (tmp_path / "a" / "annotations.json").read_text() == (tmp_path / "b" / "annotations.json").read_text()
    assert (tmp_path / "a" / "JPEGImages" / "scene_00004.png").read_bytes() == (tmp_path / "b" / "JPEGImages" / "scene_00004.png").read_bytes()
    sides = [b[3] - b[1] for b in np.concatenate(load_images(tmp_path / "a").boxes)]
    assert min(sides) >= 0.25 * 64 - 1 and max(sides) <= 0.5 * 64 + 1


def _write_voc(root, objects, size=(50, 40)):
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    from PIL import Image

    Image.new("RGB", size).save(root / "JPEGImages" / "a.png")
    body = "".join(f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
                   for n, a, b, c, d in objects)
    (root / "Annotations" / "a.xml").write_text(f"<annotation><filename>a.png</filename><size><width>{size[0]}</width>"
                                                f"<height>{size[1]}</height></size>{body}</annotation>")


def test_boxes_outside_the_image_are_clipped_and_counted(tmp_path):
    _write_voc(tmp_path / "v", [("cat", -5, 1, 20, 60), ("dog", 1, 1, 10, 10), ("dog", 70, 50, 90, 60)])
    images = load_images(tmp_path / "v")
    assert images.clipped_boxes == 2  # the third lies wholly outside: clipped to nothing and dropped
    assert images.boxes[0].tolist() == [[0, 0, 0, 20, 40], [1, 0, 0, 10, 10]]


def test_bad_annotations_are_named(tmp_path):
    _write_voc(tmp_path / "v", [("cat", 1, 1, 10, 10)])
    (tmp_path / "v" / "classes.txt").write_text("dog\n")
    with pytest.raises(GraftError, match=r"\['cat'\].*not in the class list"):
        load_images(tmp_path / "v")
    _write_voc(tmp_path / "w", [])
    (tmp_path / "w" / "Annotations" / "b.xml").write_text("")
    with pytest.raises(GraftError, match=r"b\.xml: empty annotation file"):
        load_images(tmp_path / "w")
    (tmp_path / "c.json").write_text("")
    with pytest.raises(GraftError, match=r"c\.json: empty annotation file"):
        load_images(tmp_path / "c.json")


def test_test_set_is_reindexed_onto_training_classes(scenes):
    images = load_images(scenes / "annotations.json", classes=["blue", "green", "red", "extra"])
    original = load_images(scenes)
    assert np.array_equal(images.targets[:, [2, 1, 0]], original.targets) and images.targets[:, 3].sum() == 0
    with pytest.raises(GraftError, match=r"\[.blue.\] are not in the class list"):
        load_images(scenes, classes=["red", "green"])


def test_scenes_command_writes_voc_and_refuses_bad_size_range(toy_npz, tmp_path, capsys):
    from graft.cli import main

    main(["scenes", str(toy_npz), str(tmp_path / "s"), "--count", "3", "--size", "32", "--object-size", "0.2", "0.4", "--background", str(toy_npz)])
    assert "3 scenes" in capsys.readouterr().out and len(load_images(tmp_path / "s")) == 3
    with pytest.raises(SystemExit) as exit_info:
        main(["scenes", str(toy_npz), str(tmp_path / "t"), "--object-size", "0.6", "0.3"])
    assert exit_info.value.code == 2 and "object size range" in capsys.readouterr().err
