"""Route spread: label spreading on frozen features (Zhou et al. 2004; Iscen et al. 2019)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_moons
from sklearn.linear_model import LogisticRegression

import graft
from graft.errors import GraftError
from graft.spreading import certainty, graph_features, nearest_neighbours, spread_labels

from conftest import FAST, make_images


def moons(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    points, labels = make_moons(n, noise=0.05, random_state=seed)
    return points.astype(np.float32), labels


def test_spreading_follows_the_data_where_a_linear_classifier_on_the_seeds_cannot():
    points, labels = moons()
    seeds = np.concatenate([np.flatnonzero(labels == c)[:2] for c in (0, 1)])  # two labelled points per moon
    neighbours = nearest_neighbours_euclidean(points, 10)
    scores = spread_labels(neighbours, seeds, labels[seeds], 2, k=10, alpha=0.99, iterations=200)
    spread_accuracy = (scores.argmax(1) == labels).mean()
    linear_accuracy = LogisticRegression().fit(points[seeds], labels[seeds]).score(points, labels)
    assert spread_accuracy > 0.97 and spread_accuracy > linear_accuracy + 0.05


def nearest_neighbours_euclidean(points: np.ndarray, k: int):
    """The graph of the moons by distance (their cosine geometry is not the point here): similarity exp(-d²/σ²)."""
    from sklearn.neighbors import NearestNeighbors

    from graft.spreading import Neighbours

    distances, indices = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points)
    return Neighbours(indices[:, 1:], np.exp(-(distances[:, 1:] ** 2) / 0.01).astype(np.float32))


def test_nearest_neighbours_are_exact_and_never_the_node_itself():
    rows = graph_features(np.random.default_rng(0).normal(size=(300, 20)), dims=8)
    assert rows.shape == (300, 8) and np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)
    found = nearest_neighbours(rows, 5, block=64)  # several blocks
    similarity = rows @ rows.T
    np.fill_diagonal(similarity, -np.inf)
    expected = np.argsort(-similarity, axis=1, kind="stable")[:, :5]
    assert (found.indices != np.arange(300)[:, None]).all()
    assert np.allclose(np.sort(found.similarities, 1), np.sort(np.take_along_axis(similarity, expected, 1), 1), atol=1e-5)


def test_certainty_is_one_for_a_pointed_row_and_zero_for_a_uniform_one():
    assert certainty(np.array([[1.0, 0, 0], [1, 1, 1]])) == pytest.approx([1.0, 0.0], abs=1e-6)


@pytest.fixture
def split_pool(tmp_path):
    """A few labels, a larger pool (hidden labels for --audit) and a test set of the separable toy images."""
    paths = {}
    for name, n, seed in (("train", 36, 0), ("pool", 240, 1), ("test", 60, 2)):
        images, labels = make_images(n, seed=seed)
        paths[name] = tmp_path / f"{name}.npz"
        np.savez(paths[name], images=images, labels=labels, classes=np.array(["red", "green", "blue"]))
    return paths


def test_spread_labels_the_pool_fits_a_linear_head_and_keeps_the_backbone(split_pool, source_run, tmp_path):
    run = graft.fit(split_pool["train"], route="spread", backbone="graft_convnet_s", weights=str(source_run.path),
                    test=split_pool["test"], out=tmp_path / "spread", quiet=True,
                    overrides=[*FAST, f"data.unlabeled={split_pool['pool']}", "pseudo.audit=true", "spread.k_grid=[5,10]"])
    info = run.meta["info"]
    assert info["backbone_unchanged"] and info["pool"] == 240 and info["graph_nodes"] == 36 + 240
    assert info["selection"] == "validation" and set(info["spread_scores"]) == {f"k={k},alpha={a}" for k in (5, 10) for a in (0.8, 0.9, 0.95)}
    assert info["k"] in (5, 10) and sum(info["pseudo_per_class"]) == 240
    assert info["pseudo_label_accuracy"] > 0.6 and run.metrics["test_accuracy"] > 0.6  # 3 classes: chance is 1/3
    # an ordinary linear head: the saved model scores the test set as the route's cached features did
    assert graft.evaluate(run.path, split_pool["test"]).accuracy == pytest.approx(run.metrics["test_accuracy"])


def test_spread_needs_unlabelled_images(split_pool, tmp_path):
    with pytest.raises(GraftError, match="--unlabeled"):
        graft.fit(split_pool["train"], route="spread", backbone="graft_convnet_s", out=tmp_path / "none", quiet=True,
                  overrides=[*FAST, "model.pretrained=false"])
