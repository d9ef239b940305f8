"""graft analyze: weight change, top-k unit selection, and a report that Chromium opens with every image loaded."""
import math

import numpy as np
import pytest
import torch

import graft
from graft.analysis import choose_units, top_activating, weight_change
from graft.errors import GraftError
from graft.routes import get_route, route_names

from chromium import needs_chromium, open_in_chromium
from conftest import FAST


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2))


def test_weight_change_is_zero_for_an_untouched_model():
    net = _net()
    changes = weight_change(net.state_dict(), {k: v.clone() for k, v in net.state_dict().items()})
    assert [c.name for c in changes] == ["0.weight", "3.weight"]  # layers only: no biases, no BatchNorm vectors
    assert all(c.relative == 0.0 and c.status == "changed" for c in changes)


def test_weight_change_matches_a_hand_computation():
    reference = {"a.weight": torch.full((3, 4), 2.0), "b.weight": torch.ones(2, 2), "head.weight": torch.ones(5, 2)}
    state = {k: v.clone() for k, v in reference.items()}
    state["a.weight"][0, 0] += 1.0  # ||delta|| = 1, ||W0|| = sqrt(12 * 4)
    state["a.weight"][2, 3] -= 2.0  # ||delta|| = sqrt(1 + 4)
    state["b.weight"] = torch.cat([torch.ones(2, 2) * 1.5, torch.zeros(1, 2)])  # grown by one row; old slice scaled by 1.5
    state["c.weight"] = torch.ones(2, 2)  # no pretrained counterpart
    changes = {c.name: c for c in weight_change(state, reference, skip_prefixes=["head."])}
    assert set(changes) == {"a.weight", "b.weight", "c.weight"}
    assert changes["a.weight"].relative == pytest.approx(math.sqrt(5) / math.sqrt(48), rel=1e-12)
    assert changes["b.weight"].status == "grown" and changes["b.weight"].relative == pytest.approx(0.5, rel=1e-12)
    assert changes["c.weight"].status == "new" and math.isnan(changes["c.weight"].relative)


def test_top_activating_selection_on_a_hand_made_case():
    activations = np.array([[0.1, 5.0, 0.0],
                            [0.9, 1.0, 0.0],
                            [0.5, 3.0, 2.0],
                            [0.9, 4.0, 1.0]])
    top = top_activating(activations, [0, 1, 2], k=2)
    assert top.tolist() == [[1, 3], [0, 3], [2, 3]]  # unit 0: images 1 and 3 tie at 0.9, the lower index first
    assert top_activating(activations, [2], k=10).tolist() == [[2, 3, 0, 1]]  # k is capped at the number of images


def test_choose_units_prefers_the_most_changed_then_the_most_active():
    before = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    after = before.copy()
    after[:, 2] = 3.0  # unit 2 changed most
    after[:, 0] = 1.5
    assert choose_units(before, after, 2) == ([2, 0], "most changed")
    assert choose_units(after, after, 1) == ([2], "most active (no unit changed)")
    widened = np.concatenate([after, np.ones((2, 1))], axis=1)  # a widening route added unit 3
    assert choose_units(after, widened, 1)[0] == [3]


@needs_chromium
def test_analyze_report_opens_in_chromium_with_every_image(toy_npz, source_run, tmp_path):
    run = graft.fit(toy_npz, route="finetune", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "ft",
                    quiet=True, overrides=[*FAST, "train.stages=new:1,all:2"])
    analysis = graft.analyze(run.path, count=3, k=5)
    assert analysis.before_embedding is not None and analysis.after_embedding.shape == (len(analysis.labels), 2)
    assert analysis.top_after.shape == (3, 5) and analysis.top_before.shape == (3, 5)
    assert analysis.changes and all(c.relative > 0 for c in analysis.changes)  # everything trained in stage "all"
    assert analysis.evaluation.accuracy == run.metrics["test_accuracy"]  # the run's own test split was rebuilt
    pictures = {p.name for p in analysis.report.parent.glob("*.png")}
    assert {"embedding.png", "top_units.png", "weight_change.png", "confusion.png", "per_class.png", "curves.png"} <= pictures
    dom, count, loaded = open_in_chromium(analysis.report)
    assert count == len(pictures) and loaded == count
    assert "Relative weight change" in dom


def test_analyze_linear_run_shows_no_backbone_change(toy_npz, source_run, tmp_path):
    run = graft.fit(toy_npz, route="linear", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "lin",
                    quiet=True, overrides=FAST)
    analysis = graft.analyze(run.path, toy_npz, units=[0, 1], k=3, embedding="tsne")
    assert all(c.relative == 0.0 for c in analysis.changes)  # the frozen backbone did not move
    assert np.array_equal(analysis.top_after, analysis.top_before)  # so its units see the same images
    assert analysis.evaluation.count == 90  # all of the given DATA
    with pytest.raises(GraftError, match="outside the top layer"):
        graft.analyze(run.path, units=[10_000])


@pytest.mark.parametrize("command", ["analyze", "compare", "advise"])
def test_command_has_help_with_example(command, capsys):
    from graft.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "example:" in capsys.readouterr().out


@pytest.mark.parametrize("route", [name for name in route_names() if get_route(name).labelled])
def test_analyze_works_for_every_registered_route(route, toy_npz, source_run, tmp_path):
    extra = [f"data.unlabeled={toy_npz}", f"distill.teacher={source_run.path}"] if get_route(route).unlabeled else []
    run = graft.fit(toy_npz, route=route, backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / route,
                    quiet=True, overrides=[*FAST, "train.stages=new:1,all:1", *extra])  # a route that cannot fit here fails
    analysis = graft.analyze(run.path, count=2, k=3, max_images=30, embedding="tsne")
    assert analysis.report.exists() and analysis.top_after.shape == (2, 3)
    assert analysis.evaluation.accuracy == pytest.approx(run.metrics["test_accuracy"])
    if get_route(route).pretrained:
        assert analysis.before_embedding is not None and analysis.changes  # the starting weights were rebuilt
