"""`graft fit` + `graft evaluate` give the numbers they gave before the run lifecycle took over.

The expected values were first produced by fd5d485's code (before the lifecycle) and the lifecycle reproduced them;
they were produced again, on purpose, after two changes of what is computed: new heads start at zero
(``model.head_init``) and new models are drawn from (seed, purpose) (exact resume). On this project's CPU machines
(torch as pinned in constraints.txt) with exactly this setup; losses are compared to 1e-5 relative so that another CPU's float
summation order still passes, while any change of what is computed (device, precision, data order, seeding) fails.
"""
import json

import numpy as np
import pytest

import graft

from conftest import FAST, make_images

BEFORE = {  # route -> (recorded test accuracy, recorded test loss, `graft evaluate` accuracy and loss on test.npz)
    "linear": (1.0, 0.869147777557373, 1.0, 0.867814838886261),
    "finetune": (1.0, 0.970795750617981, 1.0, 0.9702222943305969),
}


@pytest.mark.parametrize("route", sorted(BEFORE))
def test_fit_and_evaluate_numbers_are_those_of_before(route, tmp_path):
    classes = np.array(["red", "green", "blue"])
    for name, seed, n in (("toy", 0, 90), ("test", 5, 30)):
        images, labels = make_images(n, seed=seed)
        np.savez(tmp_path / f"{name}.npz", images=images, labels=labels, classes=classes)
    source = graft.fit(tmp_path / "toy.npz", route="scratch", backbone="graft_convnet_s", out=tmp_path / "source", quiet=True,
                       overrides=[*FAST, "train.stages=all:3"])
    extra = ["train.augment.preset=light"] if route == "finetune" else []
    run = graft.fit(tmp_path / "toy.npz", route=route, backbone="graft_convnet_s", weights=str(source.path), out=tmp_path / route,
                    quiet=True, overrides=[*FAST, "train.stages=new:1,all:2", *extra])
    evaluation = graft.evaluate(run.path, tmp_path / "test.npz")
    recorded = json.loads((run.path / "test_evaluation.json").read_text())
    accuracy, loss, evaluate_accuracy, evaluate_loss = BEFORE[route]
    assert run.metrics["test_accuracy"] == accuracy and recorded["loss"] == pytest.approx(loss, rel=1e-5)
    assert evaluation.accuracy == evaluate_accuracy and evaluation.loss == pytest.approx(evaluate_loss, rel=1e-5)
