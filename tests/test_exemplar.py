"""Exemplar-CNN: seed-patch sampler, transformation families, architectures, surrogate training, resume, protocol."""
import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import graft
from graft.backbones import create_model
from graft.cli import main
from graft.data.sources import ImageSet
from graft.errors import GraftError
from graft.exemplar import FAMILIES, SurrogateCopies, sample_seed_patches
from graft.recipe import ExemplarConfig
from graft.runs import partial_path

from test_runs import Interrupt

NAMES = ["exemplar-64c5-64c5-128f", "exemplar-64c5-128c5-256c5-512f", "exemplar-92c5-256c5-512c5-1024f"]
TINY = ["exemplar.classes=8", "exemplar.copies=16", "exemplar.val_copies=8", "exemplar.patch_size=16", "train.stages=all:6",
        "model.channels_last=false", "data.batch_size=16", "train.warmup_epochs=0", "train.lr=0.001"]


def textures(n: int = 24, size: int = 24, seed: int = 0) -> np.ndarray:
    """Distinct random images: each a mix of coloured blobs and stripes."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    grid = np.mgrid[0:size, 0:size].transpose(1, 2, 0)
    for i in range(n):
        frequency, angle = rng.uniform(0.2, 1.0), rng.uniform(0, np.pi)
        stripes = np.sin(frequency * (grid[..., 0] * np.cos(angle) + grid[..., 1] * np.sin(angle)))
        colour = rng.uniform(0, 1, 3)
        images[i] = np.clip(127 + 100 * stripes[..., None] * colour + rng.normal(0, 10, (size, size, 3)), 0, 255)
    return images


@pytest.fixture
def unlabelled(tmp_path):
    path = tmp_path / "unlabelled.npz"
    np.savez(path, images=textures())
    return path


def test_sampler_prefers_the_textured_quadrant():
    rng = np.random.default_rng(0)
    image = np.full((64, 64, 3), 128, np.uint8) + rng.integers(0, 3, (64, 64, 3)).astype(np.uint8)
    image[:32, :32] = rng.integers(0, 256, (32, 32, 3))  # only the top-left quadrant is textured
    images = ImageSet([], np.array([-1]), arrays=image[None], origin="synthetic")
    config = ExemplarConfig(classes=40, patch_size=16, scales=[1.0], candidates_per_image=400, patches_per_image=40)
    seeds = sample_seed_patches(images, config, seed=0)
    centres = seeds.windows[:, 1:3] + seeds.windows[:, 3:4] / 2
    share = float(np.mean((centres[:, 0] < 32) & (centres[:, 1] < 32)))
    assert share > 0.6  # uniform positions would put about a quarter there
    again = sample_seed_patches(images, config, seed=0)
    assert np.array_equal(again.windows, seeds.windows) and torch.equal(again.contexts, seeds.contexts)


@pytest.mark.parametrize("family", [*FAMILIES, "all"])
def test_each_transformation_keeps_shape_and_range_and_is_reproducible(family):
    images = ImageSet([], np.full(6, -1), arrays=textures(6, 20), origin="t")
    config = ExemplarConfig(classes=6, patch_size=16, transforms=list(FAMILIES) if family == "all" else [family])
    seeds = sample_seed_patches(images, config, seed=3)
    copies = SurrogateCopies(seeds, config, range(4), seed=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    plain = SurrogateCopies(seeds, ExemplarConfig(classes=6, patch_size=16, transforms=[]), [0], seed=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    rebuilt = SurrogateCopies(seeds, config, range(4), seed=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    for label in range(6):
        first = copies.copy(label, 1)
        assert first.shape == (3, 16, 16) and first.dtype == torch.float32
        assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
        assert torch.equal(first, rebuilt.copy(label, 1))  # a function of (seed, class, copy) only
    changed = [not torch.allclose(copies.copy(c, 1), plain.copy(c, 0), atol=1e-3) for c in range(6)]
    assert sum(changed) >= 5, f"{family} left the patches unchanged"
    assert not torch.equal(copies.copy(0, 1), copies.copy(0, 2))
    image, label = copies[4 * 2 + 1]
    assert label == 2 and torch.allclose(image, (copies.copy(2, 1) - 0.5) / 0.25)


@pytest.mark.parametrize("name", NAMES)
def test_architecture_sizes_match_the_name(name):
    convs = [int(w) for w in re.findall(r"(\d+)c5", name)]
    fc_units = int(re.search(r"(\d+)f$", name).group(1))
    model = create_model(name, 7, pretrained=False).eval()
    layers = model.layer_outputs(torch.zeros(2, 3, 32, 32))
    sides = [32, 16] + [8] * (len(convs) - 2)  # 2x2 max-pooling after the first two convolutions only
    assert [tuple(t.shape) for t in layers] == [(2, c, s, s) for c, s in zip(convs, sides)] + [(2, fc_units)]
    kernels = [m.kernel_size for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert kernels == [(5, 5)] * len(convs)
    assert model.num_features == fc_units and model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert model.forward_features(torch.zeros(1, 3, 32, 32)).shape[1] == convs[-1]
    model.train()  # dropout on the FC layer: two training passes differ, evaluation passes do not
    x = torch.randn(4, 3, 32, 32)
    assert not torch.equal(model(x), model(x)) and torch.equal(model.eval()(x), model(x))


def test_tiny_exemplar_pretrain_beats_chance_and_transfers(unlabelled, toy_npz, tmp_path):
    run = graft.pretrain(unlabelled, "exemplar", "exemplar-64c5-64c5-128f", out=tmp_path / "ex", quiet=True, overrides=TINY)
    chance = 1 / 8
    assert run.metrics["surrogate_classes"] == 8 and run.metrics["chance"] == chance
    assert run.metrics["surrogate_val_accuracy"] > 2 * chance  # held-out copies, never trained on
    epochs = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines() if '"event": "epoch"' in line]
    assert len(epochs) == 6 and all("train_accuracy" in e and "val_accuracy" in e for e in epochs)
    assert epochs[-1]["train_accuracy"] > epochs[0]["train_accuracy"]
    # the backbone goes to any route like a pretrained model
    linear = graft.fit(toy_npz, route="linear", backbone=f"run:{run.path}", out=tmp_path / "lin", quiet=True,
                       overrides=["data.image_size=16", "model.channels_last=false"])
    assert linear.metrics["test_accuracy"] > 0.6
    pretrained = load_file(str(run.path / "model.safetensors"))
    transferred = load_file(str(linear.path / "model.safetensors"))
    assert all(torch.equal(pretrained[k], transferred[k]) for k in pretrained if not k.startswith("head."))
    result = graft.evaluate_features(run.path, toy_npz, "exemplar")
    assert result.accuracy > 0.6 and result.dimensions == 4 * 64 + 4 * 64 + 128


def test_interrupted_exemplar_pretrain_resumes_to_the_same_weights(unlabelled, tmp_path):
    common = dict(out=None, quiet=True, overrides=[*TINY, "train.stages=all:3"])
    whole = graft.pretrain(unlabelled, "exemplar", "exemplar-64c5-64c5-128f", **{**common, "out": tmp_path / "whole"})
    with pytest.raises(KeyboardInterrupt):
        graft.pretrain(unlabelled, "exemplar", "exemplar-64c5-64c5-128f", callbacks=[Interrupt(2)], **{**common, "out": tmp_path / "cut"})
    assert partial_path(tmp_path / "cut").exists() and not (tmp_path / "cut").exists()
    resumed = graft.pretrain(resume=tmp_path / "cut", quiet=True)
    a, b = load_file(str(whole.path / "model.safetensors")), load_file(str(resumed.path / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["surrogate_val_accuracy"] == whole.metrics["surrogate_val_accuracy"]
    # `graft fit --resume` on an interrupted pretraining continues it the same way
    with pytest.raises(KeyboardInterrupt):
        graft.pretrain(unlabelled, "exemplar", "exemplar-64c5-64c5-128f", callbacks=[Interrupt(1)], **{**common, "out": tmp_path / "cut2"})
    again = graft.fit(resume=tmp_path / "cut2", quiet=True)
    c = load_file(str(again.path / "model.safetensors"))
    assert again.meta["route"] == "exemplar" and all(torch.equal(a[k], c[k]) for k in a)


def test_bad_exemplar_input_is_refused_before_training(unlabelled, tmp_path):
    with pytest.raises(GraftError, match=r"at most 24; pass --classes 24"):
        graft.pretrain(unlabelled, "exemplar", "exemplar-64c5-64c5-128f", out=tmp_path / "a", quiet=True, overrides=["exemplar.classes=100"])
    with pytest.raises(GraftError, match=r"smaller than the 32 px patch.*upscale_small"):
        graft.pretrain(unlabelled, "exemplar", "exemplar-64c5-64c5-128f", out=tmp_path / "b", quiet=True, overrides=["exemplar.classes=8"])
    for name in ("a", "b"):
        assert not (tmp_path / name).exists() and not partial_path(tmp_path / name).exists()
    upscaled = sample_seed_patches(ImageSet([], np.full(4, -1), arrays=textures(4, 20), origin="t"),
                                   ExemplarConfig(classes=4, patch_size=32, upscale_small=True), seed=0)
    assert upscaled.contexts.shape == (4, 3, 64, 64) and (upscaled.windows[:, 3] <= 20).all()


def test_cli_pretrain_exemplar_then_features(unlabelled, toy_npz, tmp_path, capsys):
    out = tmp_path / "cli"
    main(["pretrain", str(unlabelled), "--objective", "exemplar", "--arch", "exemplar-64c5-64c5-128f", "--classes", "8", "--copies", "4",
          "--patch-size", "16", "--epochs", "1", "--out", str(out), "--quiet", "--set", "model.channels_last=false",
          "--set", "exemplar.transforms=[translate,hue]"])
    assert capsys.readouterr().out.strip() == str(out)
    assert "- translate\n  - hue" in (out / "recipe.yaml").read_text()
    main(["features", str(out), str(toy_npz), "--protocol", "linear", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["dimensions"] == 128 and result["test_count"] == 18 and 0 <= result["accuracy"] <= 1
