"""Every registered route on tiny separable data: above chance, and each keeps its promises."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import graft
from graft.backbones import weights_hash
from graft.routes import get_route, route_names
from graft.runs import RunDirectory, partial_path

from conftest import FAST, Interrupt

# routes whose paper defaults are heavy get smaller settings here (their own tests check the defaults)
ROUTE_FAST = {"patches": ["patches.max_windows=20", "patches.scales=3", "adapt.hidden=64"]}


CLASSIFIER_ROUTES = [name for name in route_names() if get_route(name).labelled]  # exemplar pretraining: test_exemplar.py


@pytest.mark.parametrize("route", CLASSIFIER_ROUTES)
def test_every_route_learns_separable_data(route, toy_npz, source_run, tmp_path):
    # routes that learn from unlabelled images and a teacher get the toy images (labels unread) and the source run
    extra = [f"data.unlabeled={toy_npz}", f"distill.teacher={source_run.path}"] if get_route(route).unlabeled else []
    run = graft.fit(toy_npz, route=route, backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / route,
                    quiet=True, overrides=[*FAST, "train.stages=new:1,all:3", *extra, *ROUTE_FAST.get(route, [])])
    assert run.metrics["test_accuracy"] > 0.6  # chance is 1/3
    for name in ("recipe.yaml", "metrics.jsonl", "model.safetensors", "model.json", "env.json", "report.html"):
        assert (run.path / name).exists(), name
    assert not (run.path / "checkpoint").exists()
    assert run.meta["route"] == route and run.classes == ["red", "green", "blue"]


def test_linear_probe_leaves_backbone_bit_identical_and_caches(toy_npz, source_run, tmp_path):
    before = load_file(str(source_run.path / "model.safetensors"))
    first = graft.fit(toy_npz, route="linear", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "l1",
                      quiet=True, overrides=FAST)
    after = load_file(str(first.path / "model.safetensors"))
    for key, tensor in before.items():
        if not key.startswith("head."):
            assert torch.equal(tensor, after[key]), key
    assert first.meta["info"]["backbone_unchanged"] is True
    second = graft.fit(toy_npz, route="linear", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "l2",
                       quiet=True, overrides=FAST)
    events = [line for line in (second.path / "metrics.jsonl").read_text().splitlines() if '"features"' in line]
    assert events and all('"cached": true' in e for e in events)
    assert second.metrics["test_accuracy"] == first.metrics["test_accuracy"]


def test_new_stage_trains_only_the_head(toy_npz, source_run, tmp_path):
    run = graft.fit(toy_npz, route="finetune", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "ft",
                    quiet=True, overrides=[*FAST, "train.stages=new:2", "train.bn_mode=train"])
    before = load_file(str(source_run.path / "model.safetensors"))
    after = load_file(str(run.path / "model.safetensors"))
    for key in before:
        if not key.startswith("head."):
            assert torch.equal(before[key], after[key]), f"{key} changed in a head-only stage"
    # the head did train: it is no longer the fresh head the route starts from (model.head_init=zeros: all zero)
    from graft.backbones import create_model

    start = create_model("graft_convnet_s", 3, weights=str(source_run.path)).state_dict()
    assert all(not start[key].any() for key in start if key.startswith("head."))
    assert all(not torch.equal(start[key], after[key]) for key in after if key.startswith("head."))


def test_top1_stage_changes_top_group_only_and_frozen_bn_keeps_stats(toy_npz, source_run, tmp_path):
    run = graft.fit(toy_npz, route="finetune", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "t1",
                    quiet=True, overrides=[*FAST, "train.stages=top-1:2", "train.bn_mode=frozen", "train.lr=0.01"])
    before = load_file(str(source_run.path / "model.safetensors"))
    after = load_file(str(run.path / "model.safetensors"))
    top = "blocks.1."
    assert not torch.equal(before[top + "0.weight"], after[top + "0.weight"])
    for key in before:
        if key.startswith(("stem.", "blocks.0.")):
            assert torch.equal(before[key], after[key]), key
        if "running_" in key:
            assert torch.equal(before[key], after[key]), f"{key}: statistics moved with bn_mode=frozen"


def test_the_optimizer_trains_the_backbone_at_the_ratio_and_decays_only_matrices(toy_npz, source_run, tmp_path):
    model = graft.load_run(source_run.path).model
    with pytest.raises(KeyboardInterrupt):  # stopped after one epoch: the checkpoint holds the optimizer that trained
        graft.fit(toy_npz, route="finetune", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "lr", quiet=True,
                  callbacks=[Interrupt(1)], overrides=[*FAST, "train.stages=all:2", "train.lr=0.02", "train.backbone_lr_ratio=0.1",
                                                       "train.schedule=constant", "train.weight_decay=0.05"])
    checkpoint, _ = RunDirectory.reopen(tmp_path / "lr")
    groups = {g["name"]: g for g in checkpoint.load_checkpoint()["optimizer"]["param_groups"]}
    assert {name: (g["lr"], g["weight_decay"]) for name, g in groups.items()} == {
        "head": (0.02, 0.05), "head_no_decay": (0.02, 0.0), "backbone": (pytest.approx(0.002), 0.05),
        "backbone_no_decay": (pytest.approx(0.002), 0.0)}
    parameters = dict(model.named_parameters())
    head = [n for n in parameters if n.startswith("head.")]
    count = {"head": sum(parameters[n].ndim > 1 for n in head), "head_no_decay": sum(parameters[n].ndim == 1 for n in head),
             "backbone": sum(p.ndim > 1 for n, p in parameters.items() if n not in head),
             "backbone_no_decay": sum(p.ndim == 1 for n, p in parameters.items() if n not in head)}
    assert {name: len(g["params"]) for name, g in groups.items()} == count  # biases and norm scales: no decay


def test_no_decay_follows_timm_biases_norms_and_the_models_own_list():
    from graft.backbones import create_model
    from graft.train.groups import no_decay_names

    cnn = create_model("graft_convnet_s", 3, pretrained=False)
    assert no_decay_names(cnn) == {n for n, p in cnn.named_parameters() if p.ndim <= 1}
    vit = create_model("test_vit", 3, pretrained=False)
    assert {"pos_embed", "cls_token"} <= no_decay_names(vit)  # 3-D, but listed by the model's no_weight_decay()
    assert {n for n, p in vit.named_parameters() if p.ndim <= 1} <= no_decay_names(vit)


def test_mixup_cutmix_and_strong_augmentation_train(toy_npz, source_run, tmp_path):
    common = [*FAST, "train.stages=all:2", "train.augment.preset=strong", "data.image_size=24"]
    mixed = graft.fit(toy_npz, route="finetune", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "mix",
                      quiet=True, overrides=[*common, "train.augment.mixup=0.2", "train.augment.cutmix=1.0"])
    plain = graft.fit(toy_npz, route="finetune", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "plain",
                      quiet=True, overrides=common)
    assert np.isfinite(mixed.metrics["test_accuracy"])
    a, b = load_file(str(mixed.path / "model.safetensors")), load_file(str(plain.path / "model.safetensors"))
    assert not torch.equal(a["head.weight"], b["head.weight"])  # same seed and images: only the batch mixing differs


def test_early_stopping_restores_best_epoch(toy_npz, source_run, tmp_path):
    saved: list[tuple[dict, dict]] = []  # (epoch record, the weights the loop checkpointed after that epoch)

    def keep_weights(record):
        saved.append((record, load_file(str(partial_path(tmp_path / "es") / "checkpoint" / "model.safetensors"))))

    run = graft.fit(toy_npz, route="finetune", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "es",
                    quiet=True, callbacks=[keep_weights], overrides=[*FAST, "train.stages=all:30", "train.patience=2", "train.lr=0.05"])
    events = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert len(saved) < 30 and any(e["event"] == "early_stop" for e in events)
    initial = next(e for e in events if e["event"] == "initial")
    best_record, best_weights = max(saved, key=lambda s: (s[0]["val_accuracy"], -s[0]["val_loss"]))  # first of equals
    assert (best_record["val_accuracy"], -best_record["val_loss"]) > (initial["val_accuracy"], -initial["val_loss"])
    final = load_file(str(run.path / "model.safetensors"))
    assert all(torch.equal(final[key], best_weights[key]) for key in final)  # the best epoch's weights, exactly
    assert not all(torch.equal(final[key], saved[-1][1][key]) for key in final)  # which are not the last epoch's


def test_tiny_sets_are_stretched_to_min_steps(toy_npz, source_run, tmp_path):
    from graft.recipe import TrainConfig
    from graft.train.loop import lr_factor, stretch_factor
    from graft.train.groups import parse_stages

    run = graft.fit(toy_npz, route="finetune", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "st",
                    quiet=True, overrides=[*FAST, "train.stages=new:1,all:1", "train.min_steps=30"])
    events = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    schedule = next(e for e in events if e["event"] == "schedule")
    epochs = [e for e in events if e["event"] == "epoch"]
    assert schedule["stretch"] > 1 and len(epochs) == 2 * schedule["stretch"]
    assert schedule["steps_per_epoch"] * len(epochs) >= 30 > schedule["steps_per_epoch"] * (len(epochs) - 2)
    # LP-FT starts from the probe's trained head: never stretched
    lpft = graft.fit(toy_npz, route="lpft", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "lp",
                     quiet=True, overrides=[*FAST, "train.stages=new:1,all:1", "train.min_steps=30"])
    events = [json.loads(line) for line in (lpft.path / "metrics.jsonl").read_text().splitlines()]
    assert next(e for e in events if e["event"] == "schedule")["stretch"] == 1 and sum(e["event"] == "epoch" for e in events) == 1
    assert stretch_factor(10, parse_stages("new:1,all:9"), 0) == 1 and stretch_factor(4, parse_stages("all:10"), 400) == 10
    # step decay keeps its place in the schedule as given: lr_factor sees epoch // stretch
    config = TrainConfig(schedule="step", step_epochs=1, warmup_epochs=0)
    assert lr_factor(config, 0.5, 9 // 10, 1) == 1.0 and lr_factor(config, 0.5, 10 // 10, 2) == config.step_gamma


def test_probe_blas_limit_gives_the_same_head_and_is_lifted_afterwards():
    """``linear.blas_threads`` only changes how the solves run: same C, the same head (to solver tolerance),
    and the process's BLAS thread count is back to what it was once the probe returns."""
    from threadpoolctl import threadpool_info

    from graft.probe import fit_probe
    from graft.recipe import LinearConfig

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 40))
    labels = np.repeat(np.arange(3), 30)
    features = (centres[labels] + rng.normal(0, 1, (90, 40))).astype(np.float32)
    before = [pool["num_threads"] for pool in threadpool_info()]
    limited = fit_probe(features, labels, None, None, 3, LinearConfig(blas_threads=1))
    assert [pool["num_threads"] for pool in threadpool_info()] == before
    free = fit_probe(features, labels, None, None, 3, LinearConfig(blas_threads=0))
    assert limited.c == free.c and limited.scores == free.scores
    np.testing.assert_allclose(limited.weight, free.weight, atol=1e-3)
    assert (np.argmax(features @ limited.weight.T + limited.bias, 1) == labels).mean() > 0.9
