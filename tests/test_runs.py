"""Run directories: complete or absent, resumable to the same result, and usable by evaluate/predict/export."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import graft
from graft.errors import GraftError
from graft.runs import partial_path

from conftest import FAST, Interrupt

STAGES = "train.stages=new:1,all:3"


def test_resumed_run_equals_uninterrupted_run(toy_npz, source_run, tmp_path):
    # train.min_steps stretches new:1,all:3 (4 steps an epoch) to new:2,all:6; the cut falls after 2 epochs
    common = dict(route="finetune", backbone="graft_convnet_s", weights=str(source_run.path), quiet=True,
                  overrides=[*FAST, STAGES, "train.augment.preset=light", "data.image_size=20", "train.min_steps=20"])
    whole = graft.fit(toy_npz, out=tmp_path / "whole", **common)
    with pytest.raises(KeyboardInterrupt):
        graft.fit(toy_npz, out=tmp_path / "cut", callbacks=[Interrupt(2)], **common)
    assert not (tmp_path / "cut").exists() and partial_path(tmp_path / "cut").exists()
    resumed = graft.fit(resume=tmp_path / "cut", quiet=True)
    epochs = [json.loads(line) for line in (resumed.path / "metrics.jsonl").read_text().splitlines() if '"event": "epoch"' in line]
    assert len(epochs) == 8 and [e["stage_name"] for e in epochs].count("new") == 2
    a, b = load_file(str(whole.path / "model.safetensors")), load_file(str(resumed.path / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.metrics["test_accuracy"] == whole.metrics["test_accuracy"]


def test_failed_run_leaves_no_final_directory(toy_npz, tmp_path):
    with pytest.raises(GraftError, match="weights file not found"):
        graft.fit(toy_npz, route="finetune", backbone="graft_convnet_m", weights=str(toy_npz.parent / "nope.safetensors"), out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_wrong_weights_refused_before_run_directory_exists(toy_npz, source_run, tmp_path):
    with pytest.raises(GraftError, match="do not fit backbone 'graft_convnet_m'"):
        graft.fit(toy_npz, route="finetune", backbone="graft_convnet_m", weights=str(source_run.path), out=tmp_path / "y", quiet=True)
    assert not (tmp_path / "y").exists() and not partial_path(tmp_path / "y").exists()


def test_evaluate_predict_export(toy_npz, source_run, tmp_path):
    evaluation = graft.evaluate(source_run.path, toy_npz)
    assert evaluation.accuracy > 0.6 and evaluation.confusion.sum() == 90
    assert (source_run.path / "evaluations" / "toy" / "confusion.png").exists()
    images = np.load(toy_npz)["images"]
    files = []
    for i in (0, 1, 2):
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray(images[i]).save(files[-1])
    predictions = graft.predict(source_run.path, files, top_k=2)
    assert [p["image"] for p in predictions] == [str(f) for f in files]
    assert all(len(p["top"]) == 2 and p["top"][0]["probability"] >= p["top"][1]["probability"] for p in predictions)
    for fmt in ("onnx", "torchscript"):
        result = graft.export(source_run.path, fmt)
        assert result["matches"], result


def test_cli_evaluate_json_and_predict_csv(toy_npz, source_run, tmp_path, capsys):
    from graft.cli import main

    main(["evaluate", str(source_run.path), str(toy_npz), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert 0.6 < report["accuracy"] <= 1 and len(report["per_class_accuracy"]) == 3
    Image.fromarray(np.load(toy_npz)["images"][0]).save(tmp_path / "a.png")
    main(["predict", str(source_run.path), str(tmp_path / "a.png"), "--top-k", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "image,rank,class,probability" and lines[1].split(",")[2] in ("red", "green", "blue")


def test_cli_error_is_one_line_with_exit_2(tmp_path, capsys):
    from graft.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", str(tmp_path / "missing"), "--route", "linear", "--backbone", "graft_convnet_s"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("graft: error:") and "missing" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("command", ["fit", "evaluate", "predict", "export", "demo"])
def test_every_command_has_help_with_example(command, capsys):
    from graft.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "example:" in capsys.readouterr().out


def test_corrupt_file_is_skipped_and_reported(tmp_path):
    for c, name in enumerate(("a", "b")):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(8):
            image = np.full((16, 16, 3), 30 + 180 * c, np.uint8)
            Image.fromarray(image).save(tmp_path / "imgs" / name / f"{i}.png")
    (tmp_path / "imgs" / "a" / "bad.png").write_bytes(b"\x89PNG broken")
    run = graft.fit(tmp_path / "imgs", route="scratch", backbone="graft_convnet_s", out=tmp_path / "r", quiet=True,
                    overrides=[*FAST, "train.stages=all:1"])
    assert [s["file"].endswith("bad.png") for s in run.meta["skipped_files"]] == [True]
    assert "bad.png" in (run.path / "report.html").read_text()


def test_every_api_name_stays_callable_once_all_modules_are_imported():
    # a submodule named like an API function (graft/demo.py beside graft.demo()) would replace it on import
    import importlib
    import pkgutil

    for module in pkgutil.walk_packages(graft.__path__, "graft."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    assert all(callable(getattr(graft, name)) for name in graft.__all__), [n for n in graft.__all__ if not callable(getattr(graft, n))]
