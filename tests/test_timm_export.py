"""graft export RUN --format timm: plain timm loads the folder and gives graft predict's answers."""
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import graft
from graft.cli import main

from conftest import FAST, make_images


@pytest.fixture
def small_npz(tmp_path):
    images, labels = make_images(size=32)
    path = tmp_path / "small.npz"
    np.savez(path, images=images, labels=labels, classes=np.array(["red", "green", "blue"]))
    return path


def test_timm_loads_the_export_and_matches_graft_predict(small_npz, tmp_path, capsys):
    run = graft.fit(small_npz, route="finetune", backbone="test_resnet", out=tmp_path / "run", quiet=True,
                    overrides=[*FAST, "data.image_size=32", "model.pretrained=false", "train.stages=new:1,all:1"])
    main(["export", str(run.path), "--format", "timm", "--out", str(tmp_path / "exported")])
    assert "outputs match" in capsys.readouterr().out
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 3 and config["label_names"] == run.classes

    files = []
    for index, image in enumerate(make_images(n=6, size=32, seed=5)[0]):
        files.append(tmp_path / f"{index}.png")
        Image.fromarray(image).save(files[-1])
    expected = np.array([[t["probability"] for t in sorted(r["top"], key=lambda t: run.classes.index(t["class"]))]
                         for r in graft.predict(run, files, top_k=3)])
    # the two ways a user without graft loads it: timm's local folder, or the architecture with the file as its weights and
    # config.json's pretrained_cfg (its class count, or timm drops the head; its preprocessing, or timm's defaults apply)
    by_folder = timm.create_model(f"local-dir:{tmp_path / 'exported'}", pretrained=True).eval()
    by_file = timm.create_model("test_resnet", pretrained=True, num_classes=3, pretrained_cfg_overlay=dict(
        config["pretrained_cfg"], file=str(tmp_path / "exported" / "model.safetensors"))).eval()
    for model in (by_folder, by_file):
        transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))  # preprocessing from config.json
        batch = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
        with torch.no_grad():
            probabilities = torch.softmax(model(batch), 1).numpy()
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)


@pytest.mark.parametrize("route, settings, reason", [
    ("adapt", ["adapt.hidden=16", "adapt.epochs=1"], "adaptation layers"),
    ("grow-width", ["grow.epochs=1", "grow.units=8"], "a grown network (grow-width) has units hooked into graft_convnet_s")])
def test_runs_timm_cannot_rebuild_are_refused_with_reason(small_npz, tmp_path, capsys, route, settings, reason):
    run = graft.fit(small_npz, route=route, backbone="graft_convnet_s", out=tmp_path / "run", quiet=True,
                    overrides=[*FAST, "model.pretrained=false", *settings])
    with pytest.raises(SystemExit) as stop:
        main(["export", str(run.path), "--format", "timm"])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert reason in error and "--format onnx or torchscript" in error and not (run.path / "timm").exists()
