import pytest

from graft.errors import GraftError
from graft.recipe import Recipe


def test_yaml_round_trip(tmp_path):
    recipe = Recipe().override(["train.lr=3e-4", "data.image_size=96", "train.augment.preset=none", "train.patience=null"])
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe.to_yaml())
    loaded = Recipe.from_yaml(path)
    assert loaded == recipe
    assert loaded.train.lr == 3e-4 and loaded.train.patience is None and loaded.data.image_size == 96


@pytest.mark.parametrize("assignment, message", [
    ("train.lrr=1", "unknown key"),
    ("nope.x=1", "unknown section"),
    ("train.lr=fast", "must be float"),
    ("train.bn_mode=sometimes", "must be one of"),
    ("data.batch_size=1.5", "must be int"),
    ("train.lr", "KEY=VALUE"),
])
def test_overrides_are_type_checked(assignment, message):
    with pytest.raises(GraftError, match=message):
        Recipe().override([assignment])


def test_unknown_yaml_key_is_an_error(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("route: linear\ntrain:\n  epochz: 3\n")
    with pytest.raises(GraftError, match="epochz"):
        Recipe.from_yaml(path)
