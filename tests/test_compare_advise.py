"""graft compare (same split, cheapest first, budget, leaderboard, report in Chromium) and graft advise (measurements, stability)."""
import json

import numpy as np
import pytest
import torch

import graft
from graft.advice import feature_shift
from graft.comparison import BudgetStop, Entry, _BudgetWatch, leaderboard, parse_budget
from graft.errors import GraftError
from graft.report_data import read_records

from chromium import needs_chromium, open_in_chromium
from conftest import FAST

STAGES = "train.stages=new:1,all:2"


@needs_chromium
def test_compare_runs_cheapest_first_on_one_split_and_reports(toy_npz, source_run, tmp_path):
    comparison = graft.compare(toy_npz, ["finetune", "linear"], "graft_convnet_s", str(source_run.path), seeds=2,
                               out=tmp_path / "cmp", overrides=[*FAST, STAGES], quiet=True)
    assert [(e.route, e.seed, e.status) for e in comparison.entries] == [
        ("linear", 0, "done"), ("finetune", 0, "done"), ("linear", 1, "done"), ("finetune", 1, "done")]
    # every route of a seed saw the same test images
    for seed in (0, 1):
        counts = {json.loads((tmp_path / "cmp" / f"{r}-s{seed}" / "model.json").read_text())["metrics"]["test_count"] for r in ("linear", "finetune")}
        assert len(counts) == 1
    for row in comparison.leaderboard:
        accuracies = [e.test_accuracy for e in comparison.entries if e.route == row["route"]]
        assert row["seeds"] == 2 and row["accuracy"] == pytest.approx(np.mean(accuracies))
        assert row["std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert comparison.leaderboard[0]["accuracy"] >= comparison.leaderboard[1]["accuracy"]
    dom, count, loaded = open_in_chromium(comparison.report)
    assert count == 1 and loaded == 1  # the curves of all routes on one chart
    assert '<table id="leaderboard">' in dom and "finetune" in dom and "linear" in dom


def test_compare_skips_what_would_overrun_the_budget(toy_npz, source_run, tmp_path):
    comparison = graft.compare(toy_npz, ["linear", "finetune"], "graft_convnet_s", str(source_run.path), budget=1e-6,
                               out=tmp_path / "cmp", overrides=[*FAST, STAGES], quiet=True)
    assert [e.status for e in comparison.entries] == ["skipped", "skipped"]
    assert all("budget" in e.reason and e.estimate > 0 for e in comparison.entries)
    assert all(row["seeds"] == 0 and "skipped" in row["notes"] for row in comparison.leaderboard)
    assert not list((tmp_path / "cmp").glob("*-s0"))  # nothing was started


def test_a_route_that_cannot_run_fails_alone(toy_npz, source_run, tmp_path):
    comparison = graft.compare(toy_npz, ["pseudo", "linear"], "graft_convnet_s", str(source_run.path), out=tmp_path / "cmp",
                               overrides=FAST, quiet=True)  # pseudo needs unlabelled images that were not given
    assert [(e.route, e.status) for e in comparison.entries] == [("linear", "done"), ("pseudo", "failed")]
    assert "unlabel" in comparison.entries[1].reason and comparison.leaderboard[0]["route"] == "linear"
    assert not (tmp_path / "cmp" / "pseudo-s0").exists() and not (tmp_path / "cmp" / ".pseudo-s0.partial").exists()


def test_a_run_the_budget_stops_is_kept_with_its_best_epoch_only_when_asked(toy_npz, source_run, tmp_path):
    import time

    from graft.comparison import BudgetedRunner, Throughput
    from graft.console import Reporter
    from graft.recipe import Recipe

    recipe = Recipe().override(["model.backbone=graft_convnet_s", f"model.weights={source_run.path}", *FAST, STAGES])
    sizes, speed = {"train": 90, "val": 0, "test": 0}, Throughput(1e-7, 1e-7)  # starts, then the 10 ms budget ends after epoch 1
    entries = {}
    for keep in (True, False):
        runner = BudgetedRunner(time.time(), 0.01, sizes, speed, Reporter(quiet=True), keep_stopped=keep)
        entries[keep] = runner.run("finetune", 0, recipe, tmp_path / f"keep-{keep}", toy_npz, None, None)
    (entry, run), (thrown, nothing) = entries[True], entries[False]
    assert entry.status == thrown.status == "stopped" and "budget reached after epoch 1" in entry.reason
    assert nothing is None and not (tmp_path / "keep-False").exists()  # graft compare's leaderboard compares whole runs
    records = read_records(run.path / "metrics.jsonl")
    epochs = [r for r in records if r.get("event") == "epoch"]
    assert len(epochs) == 1 < 3 and [r["reason"] for r in records if r.get("event") == "halted"] == [entry.reason]
    # the run is an ordinary finished one: the model it returns is its best epoch, and model.json says so
    assert (run.path / "model.json").exists() and run.metrics["val_accuracy"] == pytest.approx(epochs[0]["val_accuracy"])
    assert graft.evaluate(run.path, toy_npz).count == 90


def test_a_callback_stops_training_with_graft_stop_training(toy_npz, source_run, tmp_path):
    def after_two(record):
        if record["epoch"] == 1 and record["stage_name"] == "all":
            raise graft.StopTraining("enough")

    seen = []
    run = graft.fit(toy_npz, route="finetune", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "run", quiet=True,
                    overrides=[*FAST, STAGES], callbacks=[after_two, seen.append])
    assert [(r["stage_name"], r["epoch"]) for r in seen] == [("new", 1), ("all", 1)]  # every callback saw the last epoch
    assert [r["reason"] for r in read_records(run.path / "metrics.jsonl") if r.get("event") == "halted"] == ["enough"]
    assert "test_accuracy" in run.metrics


def test_a_run_killed_after_a_callback_halted_it_resumes_without_training_further(toy_npz, source_run, tmp_path):
    from safetensors.torch import load_file

    def at_first_all_epoch(error):
        def callback(record):
            if record["stage_name"] == "all" and record["epoch"] == 1:
                raise error
        return callback

    fit = lambda out, callbacks: graft.fit(toy_npz, route="finetune", backbone="graft_convnet_s", weights=str(source_run.path),  # noqa: E731
                                           out=tmp_path / out, quiet=True, overrides=[*FAST, STAGES], callbacks=callbacks)
    whole = fit("whole", [at_first_all_epoch(graft.StopTraining("enough"))])
    with pytest.raises(KeyboardInterrupt):  # killed right after the halt, before the run finished
        fit("cut", [at_first_all_epoch(graft.StopTraining("enough")), at_first_all_epoch(KeyboardInterrupt())])
    seen = []
    resumed = graft.fit(resume=tmp_path / "cut", quiet=True, callbacks=[seen.append])
    assert [r for r in seen if r.get("event") == "epoch"] == []  # the checkpoint said halted: no epoch after it
    assert [r["reason"] for r in read_records(resumed.path / "metrics.jsonl") if r.get("event") == "halted"] == ["enough"]
    assert resumed.metrics["test_accuracy"] == whole.metrics["test_accuracy"]
    a, b = load_file(str(whole.path / "model.safetensors")), load_file(str(resumed.path / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_head_only_stage_is_priced_at_an_inference_pass():
    from graft.comparison import Throughput, estimate_seconds
    from graft.recipe import Recipe

    sizes, speed = {"train": 1000, "val": 100, "test": 0}, Throughput(0.001, 0.01)
    cost = lambda stages: estimate_seconds("finetune", Recipe().override([f"train.stages={stages}", "train.min_steps=0"]), sizes, speed)  # noqa: E731
    assert cost("new:1,all:1") - cost("all:1") == pytest.approx(1000 * 0.001 + 100 * 0.001)  # no backbone gradients
    assert cost("all:2") - cost("all:1") == pytest.approx(1000 * 0.01 + 100 * 0.001)


def test_budget_watch_stops_a_run_that_would_overrun():
    import time

    watch = _BudgetWatch(time.time() - 1.0, 0.5)  # a budget of 0.5 s, started 1 s ago: used up
    with pytest.raises(BudgetStop, match="budget reached after epoch 3"):
        watch({"epoch": 3, "stage_name": "all"})
    _BudgetWatch(time.time(), 3600.0)({"epoch": 1})  # budget left: goes on
    _BudgetWatch(time.time(), None)({"epoch": 1})  # no budget: never stops


def test_parse_budget_and_leaderboard_from_hand_made_entries():
    assert parse_budget("20m") == 1200 and parse_budget("90s") == 90 and parse_budget("1.5h") == 5400 and parse_budget("30") == 30
    with pytest.raises(GraftError, match="not a duration"):
        parse_budget("soon")
    entries = [Entry("a", 0, "done", 0.5, 10), Entry("a", 1, "done", 0.7, 20), Entry("b", 0, "done", 0.9, 5),
               Entry("b", 1, "stopped", reason="budget"), Entry("c", 0, "skipped", reason="estimated 99 s")]
    rows = leaderboard(entries, ["a", "b", "c"])
    assert [r["route"] for r in rows] == ["b", "a", "c"]
    assert rows[1]["accuracy"] == pytest.approx(0.6) and rows[1]["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert rows[1]["seconds"] == 15 and rows[0]["seeds"] == 1 and "seed 1 stopped" in rows[0]["notes"]
    assert rows[2]["seeds"] == 0 and "skipped" in rows[2]["notes"]


def test_unknown_route_is_refused_before_anything_runs(toy_npz, tmp_path):
    with pytest.raises(GraftError, match="unknown route"):
        graft.compare(toy_npz, ["linear", "nope"], "graft_convnet_s", out=tmp_path / "c")


def test_feature_shift_against_hand_set_source_statistics():
    norm = torch.nn.BatchNorm2d(2, eps=0.0)
    norm.running_mean.copy_(torch.tensor([1.0, -2.0]))
    norm.running_var.copy_(torch.tensor([4.0, 1.0]))
    model = torch.nn.Sequential(norm)
    batch = torch.zeros(2, 2, 3, 3)
    batch[:, 0] = 1.0  # channel 0 at the source mean: shift 0
    batch[:, 1] = 1.0  # channel 1 three source standard deviations away
    assert feature_shift(model, [batch]) == pytest.approx((0 + 3) / 2)
    assert feature_shift(torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1)), [batch]) is None


def test_advice_is_stable_for_a_fixed_seed(toy_npz, source_run):
    first = graft.advise(toy_npz, "graft_convnet_s", str(source_run.path), per_class=20, seed=3, overrides=FAST)
    again = graft.advise(toy_npz, "graft_convnet_s", str(source_run.path), per_class=20, seed=3, overrides=FAST)
    assert first.to_dict() == again.to_dict()
    assert first.images_per_class == {"red": 30, "green": 30, "blue": 30} and first.size == "small"
    assert first.split == {"fit": 30, "score": 30}
    assert first.probe_accuracy > 0.6  # the source network separates its own classes
    assert first.routes and first.routes[0] in ("linear", "lpft") and "per class" in first.reason


def test_cli_advise_compare_runs_the_top_candidate(toy_npz, source_run, tmp_path, capsys):
    from graft.cli import main

    sets = [item for override in FAST for item in ("--set", override)]
    main(["advise", str(toy_npz), "--backbone", "graft_convnet_s", "--weights", str(source_run.path), "--per-class", "20", "--json",
          "--compare", "--top", "1", "--out", str(tmp_path / "cmp"), "--quiet", *sets])
    out = capsys.readouterr().out
    advice = json.loads(out.splitlines()[0])
    board = json.loads((tmp_path / "cmp" / "leaderboard.json").read_text())["leaderboard"]
    assert [row["route"] for row in board] == advice["routes"][:1] and board[0]["seeds"] == 1
    assert "leaderboard" in out and "report:" in out
