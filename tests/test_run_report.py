"""The run report a practitioner reads first (data, recipe, curves from epoch 0 with the kept epoch, most-confused pairs,
top losses, the analyze link), checked in headless Chromium, and the notebook views ``Run.plot`` / ``Run.report``."""
import json
import math
from io import StringIO

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from rich.console import Console

import graft
from graft.console import Reporter
from graft.data.sources import ImageSet
from graft.data.split import make_splits
from graft.evaluation import predict_logits
from graft.recipe import Recipe
from graft.report_data import TopLosses, learning_curves, most_confused, read_records, top_losses
from graft.run_report import duration, formatted

from chromium import needs_chromium, open_in_chromium
from conftest import FAST, make_images


def _epoch(stage, epoch, accuracy, loss=1.0):
    return {"event": "epoch", "stage": stage, "epoch": epoch, "train_accuracy": accuracy, "train_loss": loss,
            "val_accuracy": accuracy, "val_loss": loss}


def test_curves_start_at_the_starting_model_and_mark_the_kept_epoch():
    records = [{"event": "initial", "val_accuracy": 0.5, "val_loss": 2.0}, _epoch(0, 1, 0.6), _epoch(0, 2, 0.9),
               _epoch(1, 1, 0.7), _epoch(1, 2, 0.8), {"event": "returned", "stage": 0, "epoch": 2}]
    curves = learning_curves(records)
    assert curves.epochs == [0, 1, 2, 3, 4]
    assert curves.val_accuracy[0] == 0.5 and math.isnan(curves.train_accuracy[0])  # epoch 0: validation only
    assert curves.kept == 2 and curves.stage_starts == [3]
    # the starting model kept (no epoch beat the probe), and a second loop (a pseudo-label round) kept at its own epoch
    assert learning_curves(records[:-1] + [{"event": "returned", "stage": 0, "epoch": 0}]).kept == 0
    second = [{"event": "initial", "val_accuracy": 0.8, "val_loss": 1.0}, _epoch(0, 1, 0.95), _epoch(0, 2, 0.85),
              {"event": "returned", "stage": 0, "epoch": 1}]
    both = learning_curves(records + second)
    assert both.epochs == [0, 1, 2, 3, 4, 5, 6] and both.kept == 5
    assert learning_curves(records + second[:3] + [{"event": "returned", "stage": 0, "epoch": 0}]).kept == 4
    # no validation: the last epoch is what the loop returns
    plain = [{k: v for k, v in _epoch(0, e, 0.5).items() if not k.startswith("val")} for e in (1, 2, 3)]
    assert learning_curves(plain).kept == 3 and not learning_curves(plain).validated


def test_most_confused_orders_the_off_diagonal_cells():
    confusion = np.array([[5, 3, 0], [1, 6, 0], [4, 0, 2]])
    pairs = most_confused(confusion, ["a", "b", "c"], limit=2)
    assert [(p.true, p.predicted, p.count) for p in pairs] == [("c", "a", 4), ("a", "b", 3)]
    assert pairs[0].rate == pytest.approx(4 / 6) and pairs[1].rate == pytest.approx(3 / 8)
    assert most_confused(np.eye(3, dtype=int) * 4, ["a", "b", "c"]) == []


def test_top_losses_are_the_highest_cross_entropies(tmp_path):
    images, labels = make_images(30, 3, size=20)
    test = ImageSet(["a", "b", "c"], labels, images)
    logits = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    top = top_losses(logits, labels, test, k=5, size=32)
    losses = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels), reduction="none").numpy()
    assert list(top.index) == list(np.argsort(-losses)[:5])
    np.testing.assert_allclose(top.loss, losses[top.index], rtol=1e-5)
    probability = torch.softmax(torch.from_numpy(logits), 1).numpy()[top.index]
    np.testing.assert_allclose(top.probability, probability.max(1), rtol=1e-5)
    np.testing.assert_allclose(top.true_probability, np.exp(-top.loss), rtol=1e-5)
    assert list(top.predicted) == list(logits[top.index].argmax(1)) and top.thumbnails.shape == (5, 32, 32, 3)
    top.save(tmp_path / "top.npz")
    again = TopLosses.load(tmp_path / "top.npz")
    assert again.names == top.names and np.array_equal(again.thumbnails, top.thumbnails) and np.array_equal(again.loss, top.loss)


def test_numbers_are_formatted_for_a_reader():
    assert formatted("test_accuracy", 0.93333) == "93.3 %" and formatted("test_mAP", 0.5) == "50.0 %"
    assert formatted("seconds", 4.21) == "4.2 s" and duration(125) == "2 min 05 s" and duration(3720) == "1 h 02 min"
    assert formatted("test_count", 18) == "18" and formatted("val_loss", 0.123456) == "0.1235"


def test_progress_false_keeps_messages_and_drops_the_bars():
    shown = {}
    for progress in (True, False):
        reporter = Reporter(progress=progress)
        reporter.console = Console(file=StringIO(), force_terminal=True, width=100)
        assert list(reporter.track(range(5), 5, "epoch 1/1")) == list(range(5))
        reporter.print("epoch line")
        shown[progress] = reporter.console.file.getvalue()
    assert "epoch 1/1" in shown[True] and "epoch 1/1" not in shown[False]
    assert "epoch line" in shown[False]


@pytest.fixture(scope="module")
def lpft_run(tmp_path_factory):
    """A small source network, then LP-FT on it with validation: epoch 0 is the probe."""
    folder = tmp_path_factory.mktemp("report")
    images, labels = make_images(90, 3)
    alike = np.flatnonzero(labels == 2)[::3]
    images[alike] = images[np.flatnonzero(labels == 1)[: len(alike)]]  # a third of "blue" looks green: confusions to report
    np.savez(folder / "toy.npz", images=images, labels=labels, classes=np.array(["red", "green", "blue"]))
    torch.set_num_threads(1)
    graft.fit(folder / "toy.npz", route="scratch", backbone="graft_convnet_s", out=folder / "source", quiet=True,
              overrides=[*FAST, "train.stages=all:2"])
    run = graft.fit(folder / "toy.npz", route="lpft", backbone=f"run:{folder / 'source'}", out=folder / "lpft", progress=False,
                    overrides=[*FAST, "train.stages=new:1,all:3", "linear.cache=false"])
    return run


def test_the_report_shows_data_recipe_kept_epoch_and_the_models_top_losses(lpft_run):
    run = lpft_run
    page = (run.path / "report.html").read_text()
    recipe = Recipe.from_yaml(run.path / "recipe.yaml")
    assert recipe.runtime.progress is False  # graft.fit(progress=False) is recorded
    train, val, test = make_splits(recipe, Reporter(quiet=True))
    data = json.loads((run.path / "report_data.json").read_text())["data"]["counts"]
    assert data == {"train": train.class_counts(), "val": val.class_counts(), "test": test.class_counts()}
    assert "route lpft on run:" in page and "stages new:1,all:3" in page  # the recipe in a few lines
    assert "other keys changed from the defaults: " in page and "linear.cache=false" in page
    assert f"{100 * run.metrics['test_accuracy']:.1f} %" in page  # numbers as a reader wants them
    kept = [r for r in read_records(run.path / "metrics.jsonl") if r.get("event") == "returned"]
    assert len(kept) == 1 and f"the model of epoch {kept[0]['epoch']} is kept" in page  # one stage: global = stage epoch
    assert run.metrics["val_accuracy"] == pytest.approx(kept[0]["val_accuracy"])  # the kept epoch is the returned model's
    # the gallery is the returned model's highest losses on the test split
    logits = predict_logits(run.model, test, run.preprocessing)
    expected = top_losses(logits, test.labels, test)
    stored = TopLosses.load(run.path / "top_losses.npz")
    assert list(stored.index) == list(expected.index) and np.array_equal(stored.thumbnails, expected.thumbnails)
    np.testing.assert_allclose(stored.loss, expected.loss, rtol=1e-4, atol=1e-6)
    assert 'id="top-losses"' in page and page.count("<tr>") > len(stored)
    confusion = np.asarray(json.loads((run.path / "test_evaluation.json").read_text())["confusion"])
    assert (confusion - np.diag(np.diag(confusion))).any()  # the look-alike images are confused
    assert 'id="confused"' in page and f"<td>{most_confused(confusion, test.classes)[0].true}</td>" in page
    assert "analysis/report.html" not in page  # no analysis yet: nothing to link


@needs_chromium
def test_the_report_opens_in_chromium_with_every_image_and_links_analyze(lpft_run):
    analysis = graft.analyze(lpft_run, max_images=60)
    assert analysis.report == lpft_run.path / "analysis" / "report.html"
    dom, count, loaded = open_in_chromium(lpft_run.path / "report.html")
    assert count == loaded >= 3  # curves, confusion matrix, top-losses gallery, all decoded from the page itself
    assert 'href="analysis/report.html"' in dom and "Top losses" in dom and "images per split and class" in dom


def test_run_plot_and_report_for_a_notebook(lpft_run):
    run = graft.load_run(lpft_run.path)
    for kind in ("curves", "confusion", "per_class", "top_losses"):
        figure = run.plot(kind)
        assert isinstance(figure, Figure) and figure.axes and figure.canvas.manager is None  # no pyplot window
    curves = run.plot("curves").axes[0]
    assert any(line.get_label().startswith("kept: epoch") for line in curves.lines)
    assert min(curves.lines[1].get_xdata()) == 0  # validation starts at the probe (epoch 0)
    with pytest.raises(graft.GraftError, match="unknown kind"):
        run.plot("roc")
    report = run.report()
    shown = report._repr_html_()
    assert shown.startswith("<iframe srcdoc=") and "Top losses" in report.html and "&lt;h2&gt;Data&lt;/h2&gt;" in shown
