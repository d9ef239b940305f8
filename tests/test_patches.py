"""Route patches: grid windows, the labelling rule, background re-weighting, aggregation, end to end on scenes."""
import numpy as np
import pytest
import torch

import graft
from graft.recipe import PatchesConfig
from graft.windows import DROPPED, aggregate, background_weights, crop_windows, grid_windows, label_windows

from conftest import FAST
from test_adapt import chance_map, scene_sets  # noqa: F401 - the fixture

BACKGROUND = 3  # three classes: 0, 1, 2; background is class 3


def test_labelling_rule_on_hand_made_boxes():
    boxes = np.array([[0, 10, 10, 30, 30],   # object A (class 0), 20x20
                      [1, 60, 10, 80, 30],   # object B (class 1), 20x20, beside A
                      [2, 5, 70, 7, 72]],    # a tiny object (class 2), 2x2
                     np.float32)
    windows = np.array([[5, 5, 35, 35],      # A wholly inside, A covers 44% of the window -> A
                        [20, 10, 40, 30],    # half of A only (< 60% of the box) -> background
                        [0, 0, 90, 40],      # all of A and B, each >= 20%? 400/3600 = 11% -> background
                        [10, 0, 80, 40],     # all of A and B, each 400/2800 = 14% -> background
                        [10, 5, 80, 35],     # all of A and B, each 400/2100 = 19% -> background
                        [12, 8, 78, 32],     # A 18x20=360 of box 400 (90%), 360/1584 = 23%; B the same -> dropped
                        [0, 60, 40, 100],    # the tiny object wholly inside but 4/1600 of the window -> background
                        [4, 69, 8, 73],      # a window around the tiny object -> class 2
                        [100, 100, 120, 120]],  # nothing -> background
                       np.float32)
    labels = label_windows(windows, boxes, num_classes=3)
    assert labels.tolist() == [0, BACKGROUND, BACKGROUND, BACKGROUND, BACKGROUND, DROPPED, BACKGROUND, 2, BACKGROUND]
    assert label_windows(windows, np.zeros((0, 5), np.float32), 3).tolist() == [BACKGROUND] * len(windows)


def test_grid_has_eight_scales_overlapping_neighbours_and_a_window_budget():
    config = PatchesConfig()
    windows = grid_windows(500, 375, config)
    sides = np.unique(np.round(windows[:, 2] - windows[:, 0]))
    assert len(sides) == 8 and sides.max() == pytest.approx(375) and sides.min() == pytest.approx(375 / 4, abs=1)
    assert 400 <= len(windows) <= config.max_windows
    full = grid_windows(500, 375, PatchesConfig(max_windows=10**6))
    for side in sides:  # neighbours along x on each scale overlap at least 50%
        row = full[(np.abs(full[:, 2] - full[:, 0] - side) < 1) & (full[:, 1] == 0)]
        steps = np.diff(np.sort(row[:, 0]))
        assert len(row) == 1 or steps.max() <= side * 0.5 + 1
    assert windows[:, :2].min() >= 0 and windows[:, 2].max() <= 500 + 1e-3 and windows[:, 3].max() <= 375 + 1e-3


@pytest.mark.parametrize("share", [0.1, 0.3])
def test_background_share_of_loss_weights_and_of_the_sampler(share):
    labels = np.r_[np.zeros(50), np.ones(30), np.full(920, BACKGROUND)].astype(np.int64)
    weights = background_weights(labels, BACKGROUND, share)
    assert weights[labels == BACKGROUND].sum() / weights.sum() == pytest.approx(share)
    draws = torch.multinomial(torch.from_numpy(weights), 40000, replacement=True, generator=torch.Generator().manual_seed(0)).numpy()
    assert abs((labels[draws] == BACKGROUND).mean() - share) < 0.01  # the sampling fit_head does with draw_weights


def test_aggregation_with_k_1_is_the_mean_and_k_5_favours_confident_windows():
    rng = np.random.default_rng(0)
    probabilities = rng.random((12, 4)).astype(np.float32)
    owners = np.array([0] * 5 + [1] * 7)
    scores = aggregate(probabilities, owners, 2, k=1)
    assert np.allclose(scores, [probabilities[:5].mean(0), probabilities[5:].mean(0)], atol=1e-6)
    one_sure = np.array([[0.99, 0.01]] + [[0.3, 0.7]] * 3, np.float32)
    assert aggregate(one_sure, np.zeros(4, np.int64), 1, k=1)[0].argmax() == 1
    assert aggregate(one_sure, np.zeros(4, np.int64), 1, k=5)[0].argmax() == 0


def test_batched_crops_match_a_plain_crop_for_whole_pixel_windows():
    image = np.random.default_rng(0).integers(0, 255, (40, 60, 3)).astype(np.uint8)
    crops = crop_windows(image, np.array([[10, 5, 30, 25], [0, 0, 40, 40]], np.float32), 20)
    assert crops.shape == (2, 3, 20, 20)
    assert torch.allclose(crops[0], torch.from_numpy(image[5:25, 10:30]).permute(2, 0, 1).float() / 255, atol=1e-5)


PATCH_FAST = [*FAST, "data.image_size=16", "patches.scales=4", "patches.max_windows=30", "adapt.hidden=64", "patches.epochs=15"]


def test_patches_on_scenes_beats_chance_and_evaluate_agrees(scene_sets, source_run, tmp_path):  # noqa: F811
    train, test = scene_sets
    run = graft.fit(train, test=test, route="patches", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "p",
                    quiet=True, overrides=PATCH_FAST)
    info = run.meta["info"]
    assert run.metrics["test_mAP"] > chance_map(test) + 0.25
    assert info["backbone_unchanged"] and info["trained_on"] == "cached window features" and info["background_windows"] > 0
    assert graft.evaluate(run.path, test / "annotations.json").mean_ap == pytest.approx(run.metrics["test_mAP"], abs=1e-5)
    # predict gives the power mean (mean_i p^k)^(1/k) of the windows: a probability
    top = graft.predict(run.path, [str(p) for p in sorted((test / "JPEGImages").glob("*.png"))[:3]], top_k=3)
    assert all(0 < t["probability"] <= 1 for result in top for t in result["top"])
    sampled = graft.fit(train, test=test, route="patches", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "s",
                        quiet=True, overrides=[*PATCH_FAST, "patches.reweight=sampling"])
    assert sampled.metrics["test_mAP"] > chance_map(test) + 0.25
    events = [line for line in (sampled.path / "metrics.jsonl").read_text().splitlines() if '"window_features"' in line]
    assert events and all('"cached": true' in e for e in events)  # the second run reuses the window features


def test_patches_fine_tuned_through_window_crops(scene_sets, source_run, tmp_path):  # noqa: F811
    train, test = scene_sets
    run = graft.fit(train, test=test, route="patches", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "f",
                    quiet=True, overrides=[*PATCH_FAST, "patches.finetune=true", "train.stages=new:1,all:2",
                                           # no validation split: the last epoch is returned, so its backbone must have changed
                                           # (with 13 validation windows, the head-only epoch may win and be returned)
                                           "data.val_fraction=0"])
    info = run.meta["info"]
    assert info["trained_on"] == "window crops" and not info["backbone_unchanged"]
    assert info["background_windows"] / info["train_windows"] == pytest.approx(0.1, abs=0.02)
    assert run.metrics["test_mAP"] > chance_map(test) + 0.15


def test_single_label_patches_run_is_evaluated_through_its_windows(toy_npz, source_run, tmp_path):
    run = graft.fit(toy_npz, test=toy_npz, route="patches", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "p",
                    quiet=True, overrides=PATCH_FAST)
    evaluation = graft.evaluate(run.path, toy_npz)
    assert evaluation.accuracy == pytest.approx(run.metrics["test_accuracy"]) and evaluation.accuracy > 0.6
