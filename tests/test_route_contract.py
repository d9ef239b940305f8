"""The contract every registered classifier route keeps (scikit-learn's ``check_estimator`` is the model): a route gets these
checks by registering. On tiny data (16 px, graft_convnet_s, two short stages) each route

- fits, and ``load_run`` reproduces the recorded test metric and test loss (so the recorded test logits);
- ``graft evaluate`` on the test data says the recorded metric;
- leaves the backbone bit-identical when registered ``features_only``;
- resumes an interrupted run to the same weights and metric (a route without epochs reruns to the same weights);
- exports (ONNX) a network whose answers are ``graft predict``'s, or refuses with a GraftError saying why.
"""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import graft
from graft.backbones import create_model, weights_hash
from graft.cli import main
from graft.data.sources import load_images
from graft.data.transforms import TransformedImages, eval_transform
from graft.errors import GraftError
from graft.evaluation import evaluate_logits
from graft.inference import run_scores
from graft.routes import get_route, route_names
from graft.runs import load_run, partial_path

from conftest import FAST, make_images

COMMON = [*FAST, "train.stages=new:1,all:1", "data.test_fraction=0"]


def route_inputs(route: str, data: dict) -> list[str]:
    """The per-route tiny fixture: what a route needs beyond labelled images (declared by its spec or its cost)."""
    spec = get_route(route)
    extra = [f"data.unlabeled={data['unlabeled']}", f"distill.teacher={data['source']}"] if spec.unlabeled else []
    if route == "patches":  # ~500 windows an image by default: a small grid here (test_patches checks the defaults)
        extra += ["patches.max_windows=12", "patches.scales=2", "adapt.hidden=32", "patches.epochs=3"]
    return extra


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Train / test / unlabelled toy sets and a source network trained on them (shared by every route's checks)."""
    folder = tmp_path_factory.mktemp("contract")
    classes = np.array(["red", "green", "blue"])
    for name, seed, n in (("train", 0, 60), ("test", 1, 24), ("unlabeled", 2, 30)):
        images, labels = make_images(n, seed=seed)
        np.savez(folder / f"{name}.npz", images=images, labels=labels, classes=classes)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRAFT_CACHE", str(folder / "cache"))
        source = graft.fit(folder / "train.npz", route="scratch", backbone="graft_convnet_s", out=folder / "source", quiet=True,
                           overrides=[*FAST, "train.stages=all:3", "data.test_fraction=0"])
    return {"train": folder / "train.npz", "test": folder / "test.npz", "unlabeled": folder / "unlabeled.npz", "source": source.path}


class Interrupt:
    """Stops training (as Ctrl-C does) at the end of the first epoch."""

    def __init__(self) -> None:
        self.fired = False

    def __call__(self, record) -> None:
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt


def fit(route: str, data: dict, out, **kwargs):
    return graft.fit(data["train"], route=route, backbone="graft_convnet_s", weights=str(data["source"]), test=data["test"], out=out,
                     quiet=True, overrides=[*COMMON, *route_inputs(route, data)], **kwargs)


# every route that learns a classifier of the data's classes; a ``labelled=False`` route (Exemplar-CNN pretraining)
# makes a backbone instead, and keeps its own contract in test_exemplar.py (resume, transfer, features protocol)
@pytest.mark.parametrize("route", [name for name in route_names() if get_route(name).labelled])
def test_route_keeps_the_contract(route, data, tmp_path, capsys):
    spec = get_route(route)
    run = fit(route, data, tmp_path / "whole")
    metric = "test_mAP" if run.meta.get("multilabel") else "test_accuracy"
    recorded = json.loads((run.path / "test_evaluation.json").read_text())

    # load_run reproduces the recorded test metric, confusion and loss (the loss pins the recorded logits)
    loaded = load_run(run.path)
    test = load_images(data["test"], classes=loaded.classes)
    again = evaluate_logits(run_scores(loaded, test), test.labels, test.classes)
    assert again.accuracy == run.metrics[metric] and again.confusion.tolist() == recorded["confusion"]
    assert again.loss == pytest.approx(recorded["loss"], rel=1e-4, abs=1e-5)

    # `graft evaluate` says the recorded number
    main(["evaluate", str(run.path), str(data["test"]), "--json"])
    assert json.loads(capsys.readouterr().out)["accuracy"] == run.metrics[metric]

    # a features-only route trains a head on frozen features: the backbone is bit-identical to its start
    if spec.features_only:
        start = create_model("graft_convnet_s", 3, weights=str(data["source"]))
        assert weights_hash(loaded.model) == weights_hash(start)

    # an interrupted run resumes to the same weights
    # (a route that trains no epochs in the loop, e.g. a head on cached features, has nothing to cut: it runs again
    # from the start, so it must reproduce itself bit for bit)
    interrupt = Interrupt()
    try:
        again_run = fit(route, data, tmp_path / "cut", callbacks=[interrupt])
    except KeyboardInterrupt:
        assert partial_path(tmp_path / "cut").exists()
        again_run = graft.fit(resume=tmp_path / "cut", quiet=True)
    else:
        assert not interrupt.fired
    whole, cut = load_file(str(run.path / "model.safetensors")), load_file(str(again_run.path / "model.safetensors"))
    assert whole.keys() == cut.keys() and [k for k in whole if not torch.equal(whole[k], cut[k])] == []
    assert again_run.metrics[metric] == run.metrics[metric]

    # export matches predict: the ONNX network's answers on the test images are predict's probabilities
    pytest.importorskip("onnxruntime")
    if spec.export is not None:
        try:
            spec.export(loaded)
        except GraftError as refusal:  # a route whose answer one network cannot give says so, and export refuses the same way
            with pytest.raises(GraftError, match="export"):
                graft.export(run.path, "onnx")
            assert str(refusal)
            return
    result = graft.export(run.path, "onnx", out=tmp_path / "model.onnx")
    assert result["matches"], result
    import onnxruntime

    batch = torch.stack([x for x, _ in TransformedImages(test, eval_transform(loaded.preprocessing))]).numpy()
    logits = onnxruntime.InferenceSession(result["path"], providers=["CPUExecutionProvider"]).run(None, {"images": batch})[0]
    exported = torch.softmax(torch.from_numpy(logits), 1).numpy()
    answers = graft.predict(run.path, test, top_k=3)
    predicted = np.array([[next(t["probability"] for t in a["top"] if t["class"] == c) for c in loaded.classes] for a in answers])
    np.testing.assert_allclose(exported, predicted, atol=1e-4)
