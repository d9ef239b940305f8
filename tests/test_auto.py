"""Route auto (graft.selection): choice by validation only, the budget's floor, ensembles that round-trip, flip TTA."""
import json

import numpy as np
import pytest
import torch

import graft
from graft.cli import main
from graft.data.sources import load_images
from graft.data.transforms import TransformedImages, eval_transform
from graft.ensembles import greedy_selection
from graft.errors import GraftError
from graft.inference import run_probabilities, run_scores

from conftest import FAST, make_images

STAGES = "train.stages=new:1,all:2"
FLIPS = "train.augment.hflip=true"  # FAST turns augmentation off; flip TTA needs a run trained with flips


def _write(path, images, labels):
    np.savez(path, images=images, labels=labels, classes=np.array(["red", "green", "blue"]))
    return path


@pytest.fixture
def test_files(tmp_path):
    """A test set and the same images with their labels permuted (most labels then wrong)."""
    images, labels = make_images(30, seed=1)
    permuted = np.random.default_rng(0).permutation(labels)
    assert (permuted != labels).mean() > 0.5
    return _write(tmp_path / "test.npz", images, labels), _write(tmp_path / "corrupt.npz", images, permuted)


def _auto(toy_npz, source_run, out, **keywords):
    keywords.setdefault("routes", ["linear", "finetune"])
    return graft.fit(toy_npz, route="auto", backbone="graft_convnet_s", weights=str(source_run.path), out=out, quiet=True,
                     overrides=[*FAST, STAGES, FLIPS, *keywords.pop("overrides", [])], **keywords)


def test_auto_chooses_without_reading_the_test_split(toy_npz, source_run, test_files, tmp_path):
    clean, corrupt = test_files
    records = []
    first = _auto(toy_npz, source_run, tmp_path / "clean", test=clean, callbacks=[records.append])
    # the user's callbacks see every candidate's epochs, each record naming its candidate
    assert [r["route"] for r in records if r.get("event") == "epoch"] == ["finetune"] * 3
    second = _auto(toy_npz, source_run, tmp_path / "corrupt", test=corrupt)
    # the choice, the ensemble attempt and every candidate's validation numbers are the same whatever the test labels say
    for key in ("winner", "ensemble", "tta"):
        assert first.meta["auto"][key] == second.meta["auto"][key]
    board = lambda run: [(r["route"], r["status"], r["val_accuracy"], r["val_log_loss"]) for r in run.meta["auto"]["leaderboard"]]  # noqa: E731
    assert board(first) == board(second) and all(r[1] == "done" for r in board(first))
    # ... and the test split was read at the end, by the winner: the corrupt labels cost accuracy there
    assert first.metrics["test_accuracy"] > second.metrics["test_accuracy"]
    assert first.metrics["test_count"] == 30
    for name in ("linear", "finetune"):  # candidates had no test split at all
        candidate = first.path / "candidates" / name
        assert "test" not in json.loads((candidate / "data.json").read_text())
        assert "test_accuracy" not in json.loads((candidate / "model.json").read_text())["metrics"]
    # the linear candidate kept validation out of its probe (its validation accuracy is honest)
    linear = json.loads((first.path / "candidates" / "linear" / "model.json").read_text())
    assert linear["recipe"]["linear"]["pool_validation"] is False and linear["info"]["probe_selection"] == "validation"


def test_a_budget_too_small_for_any_gradient_route_still_returns_the_probe(toy_npz, source_run, tmp_path):
    run = _auto(toy_npz, source_run, tmp_path / "auto", budget=1e-6)
    statuses = {r["route"]: r["status"] for r in run.meta["auto"]["leaderboard"]}
    assert statuses == {"linear": "done", "finetune": "skipped"}
    assert run.meta["route"] == "linear" and run.meta["auto"]["winner"] == "linear"
    assert not (run.path / "candidates" / "finetune").exists()
    assert 0 <= run.metrics["test_accuracy"] <= 1 and run.metrics["test_count"] > 0


def test_an_ensemble_run_round_trips_and_averages_its_members(toy_npz, source_run, test_files, tmp_path):
    clean, _ = test_files
    run = _auto(toy_npz, source_run, tmp_path / "auto", test=clean, ensemble="always", tta="none")
    assert run.meta["route"] == "ensemble" and run.meta["auto"]["ensemble"]["used"]
    members = run.meta["ensemble"]["members"]
    assert [m["route"] for m in members] == ["linear", "finetune"] and sum(m["weight"] for m in members) == pytest.approx(1, abs=1e-3)
    images = load_images(clean)
    loaded = graft.load_run(run.path)
    from_disk = run_probabilities(loaded, run_scores(loaded, images))
    # the members' own runs, loaded on their own, averaged with the recorded weights
    expected = sum(m["weight"] * run_probabilities(member, run_scores(member, images))
                   for m, member in ((m, graft.load_run(run.path / m["run"])) for m in members))
    np.testing.assert_allclose(from_disk, expected / sum(m["weight"] for m in members), atol=1e-5)
    # predict and evaluate on the run directory answer the same
    answers = graft.predict(run.path, images, top_k=1)
    assert [a["top"][0]["class"] for a in answers] == [run.classes[i] for i in from_disk.argmax(1)]
    assert graft.evaluate(run.path, clean).accuracy == pytest.approx(run.metrics["test_accuracy"])
    exported = graft.export(run.path, "onnx", tmp_path / "ensemble.onnx")  # one graph holding both members
    assert exported["matches"]
    with pytest.raises(GraftError, match="ensemble.*onnx"):
        graft.export(run.path, "timm")


def test_flip_tta_is_the_mean_of_the_two_forward_passes(toy_npz, source_run, tmp_path):
    run = graft.fit(toy_npz, route="finetune", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "run", quiet=True,
                    overrides=[*FAST, STAGES, FLIPS])
    images = load_images(toy_npz).subset(np.arange(12))
    data = TransformedImages(images, eval_transform(run.preprocessing))
    batch = torch.stack([data[i][0] for i in range(len(images))])
    with torch.no_grad():
        plain, mirrored = (torch.softmax(run.model.eval()(x), 1) for x in (batch, torch.flip(batch, dims=[3])))
    assert not torch.allclose(plain, mirrored, atol=1e-4)  # the mirror image does change the answer: the test can fail
    averaged = np.exp(run_scores(run, images, tta="flip"))
    np.testing.assert_allclose(averaged, (0.5 * (plain + mirrored)).numpy(), atol=1e-5)
    np.testing.assert_allclose(run_probabilities(run, run_scores(run, images, tta="none")), plain.numpy(), atol=1e-5)
    assert graft.evaluate(run.path, toy_npz, tta="flip").extra["tta"] == "flip"


def test_flip_tta_is_refused_for_a_run_trained_without_flips(toy_npz, source_run, tmp_path, capsys):
    run = graft.fit(toy_npz, route="linear", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "digits", quiet=True,
                    overrides=[*FAST, "train.augment.preset=digits"])
    with pytest.raises(SystemExit) as exit:
        main(["predict", str(run.path), str(toy_npz), "--tta", "flip"])
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "--tta flip" in error and "digits" in error and "--tta none" in error


def test_the_auto_run_directory_works_with_the_commands(toy_npz, source_run, tmp_path, capsys):
    main(["fit", str(toy_npz), "--route", "auto", "--budget", "10m", "--backbone", "graft_convnet_s", "--weights", str(source_run.path),
          "--out", str(tmp_path / "auto"), "--quiet", *[word for key in [*FAST, STAGES, FLIPS] for word in ("--set", key)]])
    assert capsys.readouterr().out.strip().endswith("auto")
    meta = json.loads((tmp_path / "auto" / "model.json").read_text())
    auto = meta["auto"]
    assert auto["winner"] == meta["route"] and auto["why"] and auto["measurements"]["size"] == "small"
    assert auto["tta"]["used"] == meta["tta"] and auto["tta"]["reason"]
    done = [r for r in auto["leaderboard"] if r["status"] == "done"]
    assert done and meta["metrics"]["val_accuracy"] >= max(r["val_accuracy"] for r in done)
    assert 'id="auto-leaderboard"' in (tmp_path / "auto" / "report.html").read_text()
    picture = tmp_path / "one.png"
    from PIL import Image

    Image.fromarray(make_images(3)[0][0]).save(picture)
    main(["predict", str(tmp_path / "auto"), str(picture), "--top-k", "1", "--format", "json"])
    assert json.loads(capsys.readouterr().out)[0]["top"][0]["class"] in ("red", "green", "blue")
    main(["evaluate", str(tmp_path / "auto"), str(toy_npz), "--json"])
    assert json.loads(capsys.readouterr().out)["count"] == 90
    with pytest.raises(SystemExit) as exit:  # --budget means nothing to one route
        main(["fit", str(toy_npz), "--route", "linear", "--budget", "1m"])
    assert exit.value.code == 2 and "--route auto" in capsys.readouterr().err


def test_greedy_selection_combines_complementary_models_and_keeps_a_dominant_one():
    labels = np.array([0, 1] * 6)
    right, wrong = np.array([0.9, 0.1]), np.array([0.4, 0.6])
    one_hot = lambda y: np.eye(2)[y]  # noqa: E731
    # model a is confidently right on the first half and mildly wrong elsewhere; b the other way round
    a = np.array([one_hot(y) * 0.8 + 0.1 if i < 6 else (wrong if y == 0 else wrong[::-1]) for i, y in enumerate(labels)])
    b = np.array([one_hot(y) * 0.8 + 0.1 if i >= 6 else (wrong if y == 0 else wrong[::-1]) for i, y in enumerate(labels)])
    selection = greedy_selection([a, b], labels)
    assert selection.members == [0, 1] and selection.accuracy == 1.0
    assert max((p.argmax(1) == labels).mean() for p in (a, b)) == 0.5
    perfect = np.array([right if y == 0 else right[::-1] for y in labels])
    alone = greedy_selection([a, perfect, b], labels)
    assert alone.members == [1] and alone.weights[1] == 1.0


def test_an_interrupted_auto_run_resumes_to_the_uninterrupted_result(toy_npz, source_run, test_files, tmp_path):
    from safetensors.torch import load_file

    from conftest import Interrupt
    from graft.runs import partial_path

    clean, _ = test_files
    whole = _auto(toy_npz, source_run, tmp_path / "whole", test=clean, ensemble="never")
    with pytest.raises(KeyboardInterrupt):  # at the second epoch of the finetune candidate (linear has no epochs)
        _auto(toy_npz, source_run, tmp_path / "cut", test=clean, ensemble="never", callbacks=[Interrupt(2)])
    cut = partial_path(tmp_path / "cut")
    assert (cut / "candidates" / "linear" / "model.json").exists() and partial_path(cut / "candidates" / "finetune").exists()
    with pytest.raises(GraftError, match="keeps its budget"):
        graft.fit(resume=tmp_path / "cut", budget="1h")
    records = []
    resumed = graft.fit(resume=tmp_path / "cut", quiet=True, callbacks=[records.append])
    assert [r["epoch"] for r in records if r.get("event") == "epoch"] == [2]  # only what was left: finetune's last epoch
    board = lambda run: [(r["route"], r["status"], r["val_accuracy"], r["val_log_loss"]) for r in run.meta["auto"]["leaderboard"]]  # noqa: E731
    assert board(resumed) == board(whole) and resumed.meta["auto"]["winner"] == whole.meta["auto"]["winner"]
    assert resumed.metrics["test_accuracy"] == whole.metrics["test_accuracy"]
    a, b = load_file(str(whole.path / "model.safetensors")), load_file(str(resumed.path / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _complementary(labels, classes=3):
    """Two models' probabilities: each confidently right on one half of ``labels`` and mildly wrong on the other, so
    that their mean is right everywhere (an ensemble that wins on validation)."""
    def model(confident):
        p = np.zeros((len(labels), classes))
        for i, y in enumerate(labels):
            p[i] = 0.1 if confident[i] else 0.0
            p[i, y], p[i, (y + 1) % classes] = (0.8, 0.1) if confident[i] else (0.4, 0.6)
        return p
    first = np.arange(len(labels)) < len(labels) // 2
    return model(first), model(~first)


def test_the_ensemble_and_flips_are_used_only_when_their_test_scoring_fits_in_the_budget_left(toy_npz, source_run, test_files,
                                                                                               tmp_path):
    import time

    from graft.placement import Placement
    from graft.recipe import Recipe
    from graft.runs import partial_path
    from graft.selection import _choose, _choose_tta, _ScoringClock

    clean, _ = test_files
    auto = _auto(toy_npz, source_run, tmp_path / "auto", test=clean, ensemble="never", tta="none")
    rates = auto.meta["auto"]["scoring_seconds_per_image"]  # measured on validation: what the clock prices scoring with
    assert set(rates) == {"linear", "finetune"} and all(r > 0 for r in rates.values())
    runs = {name: graft.load_run(auto.path / "candidates" / name) for name in ("linear", "finetune")}
    val = load_images(clean)
    a, b = _complementary(val.labels)
    library = {"linear": (runs["linear"], a), "finetune": (runs["finetune"], b)}
    best = {"route": "linear", "val_accuracy": float((a.argmax(1) == val.labels).mean())}
    rates = {"linear": 1e-3, "finetune": 1e-3}  # seconds per image: 10,000 test images cost 10 s a member and pass
    final = tmp_path / "final"
    partial_path(final).mkdir()
    now = time.time()
    roomy, spent = _ScoringClock(now, 3600.0, rates, len(val), 10_000), _ScoringClock(now - 100, 105.0, rates, len(val), 10_000)
    _, meta, probabilities, _, combined = _choose(library, best, val, "auto", Recipe(), final, roomy)
    accuracy = float((probabilities.argmax(1) == val.labels).mean())
    assert meta["route"] == "ensemble" and combined["used"] and accuracy == 1.0 > best["val_accuracy"]
    # 5 s left: the ensemble wins on validation but its 20 s of test scoring do not fit, so the best single candidate is the result
    _, meta, probabilities, why, combined = _choose(library, best, val, "auto", Recipe(), final, spent)
    assert meta["route"] == "linear" and probabilities is a and not combined["used"]
    assert "budget" in combined["reason"] and "budget" in why
    flips = {clock: _choose_tta(runs["finetune"], val, b, "auto", Placement(), clock, ["finetune"]) for clock in (roomy, spent)}
    assert "val_accuracy_flip" in flips[roomy] and flips[spent]["used"] == "none" and "not tried" in flips[spent]["reason"]
    # asked for by name, flips are used whatever the budget says
    assert "val_accuracy_flip" in _choose_tta(runs["finetune"], val, b, "flip", Placement(), spent, ["finetune"])


def test_an_ensemble_that_wins_validation_by_a_few_images_is_not_used(toy_npz, source_run, test_files, tmp_path):
    from graft.ensembles import gain_p_value
    from graft.recipe import Recipe
    from graft.runs import partial_path
    from graft.selection import CLEAR_GAIN, _choose, _ScoringClock

    # the sign test: 3 images won and none lost could be luck (p = 1/8); 15 won and none lost could not
    right = np.zeros(30, bool)
    assert gain_p_value(right, right) == 1.0
    assert gain_p_value(np.arange(30) < 3, right) == pytest.approx(0.125) and 0.125 > CLEAR_GAIN
    assert gain_p_value(np.arange(30) < 15, right) < CLEAR_GAIN
    clean, _ = test_files
    val = load_images(clean)
    runs = {name: graft.load_run(source_run.path) for name in ("linear", "finetune")}
    # the best single model is sure on images 0-19, just wrong on 20-21 and sure and wrong on the rest; the other is
    # sure and right only on 20-21: their mean wins validation by those two images and no more
    def model(rows):
        p = np.zeros((len(val.labels), 3))
        for i, y in enumerate(val.labels):
            p[i, [y, (y + 1) % 3, (y + 2) % 3]] = rows(i)
        return p
    single = model(lambda i: (0.9, 0.05, 0.05) if i < 20 else (0.45, 0.55, 0.0) if i < 22 else (0.05, 0.9, 0.05))
    other = model(lambda i: (0.2, 0.6, 0.2) if i < 20 else (0.9, 0.05, 0.05) if i < 22 else (0.05, 0.9, 0.05))
    library = {"linear": (runs["linear"], single), "finetune": (runs["finetune"], other)}
    best = {"route": "linear", "val_accuracy": float((single.argmax(1) == val.labels).mean())}
    final = tmp_path / "final"
    partial_path(final).mkdir()
    _, meta, probabilities, why, combined = _choose(library, best, val, "auto", Recipe(), final,
                                                    _ScoringClock(0.0, None, {}, len(val), len(val)))
    assert combined["tried"] and round(30 * combined["gain_val"]) == 2 and combined["p_value"] == pytest.approx(0.25)
    assert meta["route"] != "ensemble" and probabilities is single and not combined["used"] and "luck" in combined["reason"] and "luck" in why
