"""Developmental networks (Wang et al. 2017): growing keeps the old units, gamma learns, scenarios train what they
name, continual growth keeps every task's head and reports its accuracy matrix."""
import numpy as np
import pytest
import torch

import graft
from graft.backbones import create_model
from graft.growth import KINDS, GrowthHead, Scale, grow
from graft.train.groups import optimizer_groups

from conftest import FAST, make_images


def _pre_logits(model, x):
    return model.forward_head(model.forward_features(x), pre_logits=True)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("normalize", [False, True])
def test_kept_units_equal_the_original_right_after_growing(kind, normalize):
    torch.manual_seed(0)
    model = create_model("graft_alexnet_32", 5, pretrained=False).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        fc6, fc7 = model.fc6(torch.flatten(model.pool(model.forward_features(x)), 1)), _pre_logits(model, x)
    head = grow(model, kind, 3, 16, 8, normalize, 10.0, 0.5, 32)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (4, 3)
        assert torch.allclose(_pre_logits(model, x), fc7, atol=1e-6)  # old fc7 units unchanged
        assert torch.allclose(head._inputs["top"], fc6, atol=1e-6)  # old fc6 units (what fc7 and fc7+ read) unchanged
        representation = head.tasks[0].representation([fc7] + [head.branches[i](head._inputs) for i in head.tasks[0].spec["reads"]])
    if kind == "width" and not normalize:
        assert torch.allclose(representation[:, :fc7.shape[1]], fc7)
    if kind == "width" and normalize:
        assert torch.allclose(representation[:, :fc7.shape[1]], 10 * torch.nn.functional.normalize(fc7, dim=1), atol=1e-5)


@pytest.mark.parametrize("kind", ["width", "width2"])
def test_zero_new_classifier_weights_give_the_plain_heads_logits(kind):
    torch.manual_seed(1)
    plain = create_model("graft_alexnet_32", 4, pretrained=False).eval()
    model = create_model("graft_alexnet_32", 4, pretrained=False)
    model.load_state_dict(plain.state_dict())
    head = grow(model, kind, 4, 12, None, False, 10.0, 0.5, 32)
    classifier = head.tasks[0].classifier
    with torch.no_grad():
        classifier.weight.zero_()
        classifier.weight[:, :plain.num_features] = plain.head.weight
        classifier.bias.copy_(plain.head.bias)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), plain(x), atol=1e-5)


def test_gamma_receives_gradients():
    torch.manual_seed(2)
    model = create_model("graft_alexnet_32", 3, pretrained=False)
    # a classifier at zero passes no gradient back on the first step: the wiring is checked with a random one
    head = grow(model, "width2", 3, 16, None, True, 10.0, 0.5, 32, head_init="library")
    model.train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(6, 3, 32, 32)), torch.tensor([0, 1, 2, 0, 1, 2]))
    loss.backward()
    scales = [m for m in head.modules() if isinstance(m, Scale)]
    assert len(scales) == 4  # fc6/fc6+ before fc7+, fc7/fc7+ before the classifier
    assert all(s.gamma.grad is not None and s.gamma.grad.abs().sum() > 0 for s in scales)


def test_conv_backbone_grows_new_channels_from_the_top_convs_input():
    model = create_model("graft_convnet_s", 3, pretrained=False).eval()
    x = torch.randn(2, 3, 16, 16)
    before = _pre_logits(model, x)
    head = grow(model, "width", 3, 10, None, True, 10.0, 0.5, 16)
    assert head.spec["top"] == "blocks.1.0" and isinstance(head.branches[0].top[0], torch.nn.Conv2d)
    assert torch.allclose(_pre_logits(model.eval(), x), before)
    wide = create_model("graft_convnet_s", 3, pretrained=False).eval()
    before = _pre_logits(wide, x)
    grow(wide, "width2", 3, 10, None, True, 10.0, 0.5, 16)  # a max-pool between the two top convs: new maps pooled too
    assert wide.eval()(x).shape == (2, 3) and torch.allclose(_pre_logits(wide, x), before)


@pytest.fixture
def alexnet_source(toy_npz, tmp_path):
    return graft.fit(toy_npz, route="scratch", backbone="graft_alexnet_32", out=tmp_path / "source", quiet=True,
                     overrides=[*FAST, "train.stages=all:2"])


@pytest.mark.parametrize("train, trained", [("new", set()), ("top-1", {"fc7"}), ("top-2", {"fc6", "fc7"}), ("all", None)])
def test_each_scenario_trains_exactly_the_layers_it_names(alexnet_source, toy_npz, tmp_path, train, trained):
    run = graft.fit(toy_npz, route="grow-width", backbone=f"run:{alexnet_source.path}", out=tmp_path / train, quiet=True,
                    overrides=[*FAST, f"grow.train={train}", "grow.epochs=1", "grow.units=8", "data.val_fraction=0"])
    before, after = alexnet_source.model.state_dict(), run.model.state_dict()
    backbone = [k for k in before if not k.startswith("head.")]
    parameters = {n for n, _ in run.model.named_parameters()}
    changed = {k.split(".")[0] for k in backbone if not torch.equal(before[k], after[k])}
    expected = {k.split(".")[0] for k in backbone if k in parameters} if trained is None else trained
    assert changed == expected
    assert all(not torch.equal(before[k], after[k]) for k in backbone if k in parameters and k.split(".")[0] in expected)
    assert run.meta["info"]["scenario"] == train and run.metrics["test_accuracy"] > 0


def test_new_layers_train_at_ten_times_the_backbone_lr():
    model = create_model("graft_alexnet_32", 3, pretrained=False)
    grow(model, "both", 3, 8, 8, True, 10.0, 0.5, 32)
    groups = {g["name"]: g for g in optimizer_groups(model, 0.01, 0.1, 5e-4)}
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    assert {id(p) for g in ("head", "head_no_decay") for p in groups[g]["params"]} == head_ids
    assert groups["head"]["lr"] == pytest.approx(10 * groups["backbone"]["lr"])


def test_two_task_run_keeps_both_heads_and_reports_its_accuracy_matrix(alexnet_source, tmp_path):
    images, labels = make_images(60, classes=2, seed=5)
    task = tmp_path / "task_b.npz"
    np.savez(task, images=images[:, ::-1].copy(), labels=labels, classes=np.array(["up", "down"]))
    step = graft.grow(alexnet_source.path, task, route="grow-width", out=tmp_path / "b", quiet=True,
                      overrides=[*FAST, "grow.epochs=2", "grow.units=8", "grow.lwf=1.0"])
    info = step.meta["info"]
    matrix = info["accuracy_matrix"]
    assert [t["name"] for t in info["tasks"]] == ["toy", "task_b"]
    assert len(matrix) == 2 and all(len(row) == 2 for row in matrix) and matrix[0][1] is None
    assert matrix[0][0] == pytest.approx(alexnet_source.metrics["test_accuracy"])
    assert matrix[1][1] == pytest.approx(step.metrics["test_accuracy"])
    assert info["forgetting"] == [pytest.approx(matrix[0][0] - matrix[1][0])]
    # the saved run answers for either task; the source task's head still reads the kept units
    from graft.api import make_splits, select_task
    from graft.console import Reporter
    from graft.evaluation import evaluate_model
    from graft.recipe import Recipe

    loaded = graft.load_run(step.path)
    assert isinstance(loaded.model.get_classifier(), GrowthHead)
    source = select_task(loaded, "toy")
    _, _, test = make_splits(Recipe.from_dict(alexnet_source.meta["recipe"]), Reporter(quiet=True))
    assert evaluate_model(source.model, test, source.preprocessing).accuracy == pytest.approx(matrix[1][0])
    assert graft.evaluate(step.path, tmp_path / "task_b.npz", task=1).count == 60
    answers = graft.predict(step.path, test.subset([0, 1]), task="toy")
    assert {a["top"][0]["class"] for a in answers} <= {"red", "green", "blue"}
    assert graft.predict(step.path, test.subset([0]))[0]["top"][0]["class"] in ("up", "down")
    with pytest.raises(graft.GraftError, match="no task"):
        graft.predict(step.path, test.subset([0]), task="nope")
    # a grown run exports like any other (the newest task's head), outputs equal to PyTorch's
    for fmt in ("onnx", "torchscript"):
        assert graft.export(step.path, fmt)["matches"], fmt


def test_bad_scenario_and_route_are_refused_before_training(alexnet_source, toy_npz):
    from graft.recipe import Recipe

    with pytest.raises(graft.GraftError, match="grow.train 'everything'"):
        Recipe().override(["grow.train=everything"])
    with pytest.raises(graft.GraftError, match="needs a grow route"):
        graft.grow(alexnet_source.path, toy_npz, route="finetune")


def test_heads_and_training_layer_never_import_growth_and_a_fresh_process_reloads_a_grown_run(alexnet_source, toy_npz, tmp_path):
    import ast
    import os
    import subprocess
    import sys
    from pathlib import Path

    def run_python(code: str) -> str:  # a fresh interpreter on this checkout's graft
        env = {**os.environ, "PYTHONPATH": str(Path(graft.__file__).parents[1])}
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout.strip()

    package = Path(graft.__file__).parent
    for module in [package / "heads.py", *sorted((package / "train").glob("*.py"))]:
        imported = {node.module if isinstance(node, ast.ImportFrom) else alias.name
                    for node in ast.walk(ast.parse(module.read_text())) if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in node.names}
        assert "graft.growth" not in imported, f"{module.name} imports graft.growth (even inside a function)"
    run = graft.fit(toy_npz, route="grow-width", backbone=f"run:{alexnet_source.path}", out=tmp_path / "w", quiet=True,
                    overrides=[*FAST, "grow.epochs=1", "grow.units=8"])
    # load_run in a process that never imported graft.growth itself still rebuilds the grown head, with its weights
    logits = run_python(f"import graft, torch; run = graft.load_run({str(run.path)!r}); torch.manual_seed(0); "
                        "print(type(run.model.get_classifier()).__name__, run.model(torch.rand(2, 3, 16, 16)).sum().item())")
    torch.manual_seed(0)
    with torch.no_grad():
        expected = run.model.eval()(torch.rand(2, 3, 16, 16)).sum().item()
    name, value = logits.split()
    assert name == "GrowthHead" and float(value) == pytest.approx(expected, rel=1e-5)


def test_unknown_head_kind_is_refused_with_its_name():
    from graft.errors import GraftError
    from graft.heads import restore_head

    with pytest.raises(GraftError, match="head kind 'mystery'"):
        restore_head(create_model("graft_convnet_s", 3, pretrained=False), {"kind": "mystery"})
