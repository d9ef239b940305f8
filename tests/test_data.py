import numpy as np
import pytest
from PIL import Image

from graft.data import load_images, stratified_split
from graft.data.sources import require_classes
from graft.errors import GraftError


def _folder(tmp_path, classes=("cat", "dog"), per_class=3):
    root = tmp_path / "images"
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((12, 10, 3), 40 * (c + i), np.uint8)).save(root / name / f"{i}.png")
    return root


def test_folder_converts_modes_and_skips_corrupt_files(tmp_path):
    root = _folder(tmp_path)
    Image.fromarray(np.full((8, 8), 200, np.uint8), "L").save(root / "cat" / "grey.png")
    Image.fromarray(np.full((8, 8, 4), 100, np.uint8), "RGBA").save(root / "dog" / "alpha.png")
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(root / "dog" / "deep.png")
    (root / "dog" / "broken.jpg").write_bytes(b"not an image at all")
    (root / "cat" / "notes.txt").write_text("hello")
    images = load_images(root)
    assert images.classes == ["cat", "dog"]
    assert len(images) == 9
    skipped = {name.split("/")[-1] for name, _ in images.skipped}
    assert skipped == {"broken.jpg", "notes.txt"}
    for i in range(len(images)):
        array = images.image(i)
        assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
    deep = [i for i, p in enumerate(images.paths) if p.name == "deep.png"][0]
    assert images.image(deep).max() == 255  # 16-bit full scale -> 8-bit full scale


def test_csv_with_relative_paths(tmp_path):
    root = _folder(tmp_path)
    csv = tmp_path / "list.csv"
    csv.write_text("path,label\n" + "\n".join(f"images/{c}/{i}.png,{c}" for c in ("cat", "dog") for i in range(3)))
    images = load_images(csv)
    assert images.classes == ["cat", "dog"] and len(images) == 6
    assert images.class_counts() == {"cat": 3, "dog": 3}


def test_npz_greyscale_and_float(tmp_path):
    path = tmp_path / "g.npz"
    np.savez(path, images=np.random.rand(4, 6, 6).astype(np.float32), labels=np.array([0, 1, 0, 1]))
    images = load_images(path)
    assert images.arrays.shape == (4, 6, 6, 3) and images.arrays.dtype == np.uint8
    assert images.classes == ["0", "1"]


@pytest.mark.parametrize("build, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no class sub-folders"),
    (lambda p: (p / "d" / "a").mkdir(parents=True) or p / "d", "has no images"),
    (lambda p: (p / "x.txt").write_text("1") and p / "x.txt", "unknown DATA form"),
])
def test_bad_data_gives_one_clear_line(tmp_path, build, message):
    with pytest.raises(GraftError, match=message) as error:
        load_images(build(tmp_path))
    assert "\n" not in str(error.value)


def test_npz_labels_outside_class_list(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros((3, 4, 4, 3), np.uint8), labels=np.array([0, 1, 5]), classes=np.array(["a", "b"]))
    with pytest.raises(GraftError, match=r"labels \[5\] are outside"):
        load_images(path)


def test_unknown_class_in_test_set_is_named(tmp_path):
    train = load_images(_folder(tmp_path / "a"))
    other = _folder(tmp_path / "b", classes=("cat", "horse"))
    with pytest.raises(GraftError, match="horse"):
        load_images(other, classes=train.classes)


def test_single_class_refused(tmp_path):
    with pytest.raises(GraftError, match="at least two"):
        require_classes(load_images(_folder(tmp_path, classes=("cat",))))


def test_stratified_split_keeps_every_class_and_is_seeded():
    labels = np.repeat(np.arange(4), [2, 5, 10, 30])
    kept, held = stratified_split(labels, 0.2, seed=3)
    assert set(labels[kept]) == set(labels[held]) == {0, 1, 2, 3}
    assert len(np.intersect1d(kept, held)) == 0 and len(kept) + len(held) == len(labels)
    again = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(again[1], held)


def test_split_that_would_empty_a_class_is_refused():
    with pytest.raises(GraftError, match="class 'b' has 1 image"):
        stratified_split(np.array([0, 0, 0, 1]), 0.3, seed=0, names=["a", "b"])
