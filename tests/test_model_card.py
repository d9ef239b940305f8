"""RUN/README.md: a Hugging Face model card whose front matter agrees with the run's model.json and files."""
import hashlib
import json

import numpy as np
from PIL import Image

import graft
from graft.model_card import read_front_matter

from conftest import FAST, make_images


def test_model_card_front_matter_matches_the_run(toy_npz, source_run, tmp_path):
    run = graft.fit(toy_npz, route="finetune", backbone="graft_convnet_s", weights=str(source_run.path), out=tmp_path / "carded",
                    quiet=True, overrides=[*FAST, "train.stages=new:1,all:1", "train.min_steps=40"])
    card = run.path / "README.md"
    header = read_front_matter(card)
    meta = json.loads((run.path / "model.json").read_text())
    assert header["library_name"] == "graft" and "license" in header and header["license"] is None
    assert header["base_model"] == meta["backbone"] == "graft_convnet_s"
    assert header["graft"]["route"] == meta["route"] == "finetune" and header["graft"]["classes"] == meta["classes"]
    assert header["graft"]["weights_sha256"] == hashlib.sha256((run.path / "model.safetensors").read_bytes()).hexdigest()
    assert header["graft"]["base_model_weights"] == {
        "source": str(source_run.path), "sha256": hashlib.sha256((source_run.path / "model.safetensors").read_bytes()).hexdigest()}
    assert header["graft"]["metrics"] == meta["metrics"]
    (result,) = header["model-index"][0]["results"]
    assert header["model-index"][0]["name"] == "carded"
    assert result["metrics"] == [{"type": "accuracy", "name": "test accuracy", "value": meta["metrics"]["test_accuracy"]}]
    sizes = {d["split"]: d["images"] for d in header["graft"]["data"]}
    assert sizes["test"] == meta["metrics"]["test_count"] and sum(sizes.values()) == 90 and header["datasets"] == ["toy.npz"]
    text = card.read_text()
    per_class = json.loads((run.path / "test_evaluation.json").read_text())["per_class_accuracy"]
    for name, accuracy in per_class.items():
        assert f"| {name} | {accuracy:.4f} |" in text
    # 4 steps an epoch stretched x5 to reach train.min_steps=40: a limit the card states
    assert "stretched x5 to stages `new:5,all:5`" in text


def test_model_card_names_skipped_files(tmp_path):
    images, labels = make_images(n=30)
    for index, (image, label) in enumerate(zip(images, labels)):
        (tmp_path / "folder" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "folder" / str(label) / f"{index}.png")
    (tmp_path / "folder" / "0" / "broken.png").write_bytes(b"not a png")
    run = graft.fit(tmp_path / "folder", route="scratch", backbone="graft_convnet_s", out=tmp_path / "run", quiet=True,
                    overrides=[*FAST, "model.pretrained=false", "train.stages=all:1"])
    header = read_front_matter(run.path / "README.md")
    assert header["graft"]["base_model_weights"] == {"source": "random initialisation", "sha256": None}
    assert "1 unreadable files were skipped across the splits" in (run.path / "README.md").read_text()
    assert np.isclose(header["model-index"][0]["results"][0]["metrics"][0]["value"], run.metrics["test_accuracy"])
