"""Supervised source-task pretraining: a normal run whose backbone every route takes as run:PATH."""
import pytest
import torch
from safetensors.torch import load_file

import graft
from graft.errors import GraftError
from graft.runs import partial_path

from conftest import FAST
from test_runs import Interrupt


def test_supervised_pretrain_loads_into_fit(toy_npz, tmp_path):
    source = graft.pretrain(toy_npz, "supervised", "graft_convnet_s", out=tmp_path / "source", quiet=True,
                            overrides=[*FAST, "train.stages=all:3"])
    assert source.meta["backbone"] == "graft_convnet_s" and source.metrics["test_accuracy"] > 0.6
    weights = load_file(str(source.path / "model.safetensors"))
    assert not torch.equal(weights["stem.1.running_var"], torch.ones_like(weights["stem.1.running_var"]))  # BN learnt its statistics
    target = graft.fit(toy_npz, route="finetune", backbone=f"run:{source.path}", out=tmp_path / "target", quiet=True,
                       overrides=[*FAST, "train.stages=new:2"])
    assert target.metrics["test_accuracy"] > 0.6 and target.meta["backbone"] == "graft_convnet_s"
    after = load_file(str(target.path / "model.safetensors"))
    assert all(torch.equal(weights[k], after[k]) for k in weights if not k.startswith("head."))  # the pretrained backbone, untouched


def test_supervised_pretrain_resumes_and_needs_an_arch(toy_npz, tmp_path):
    common = dict(quiet=True, overrides=[*FAST, "train.stages=all:3"])
    whole = graft.pretrain(toy_npz, "supervised", "graft_convnet_s", out=tmp_path / "whole", **common)
    with pytest.raises(KeyboardInterrupt):
        graft.pretrain(toy_npz, "supervised", "graft_convnet_s", out=tmp_path / "cut", callbacks=[Interrupt(2)], **common)
    assert partial_path(tmp_path / "cut").exists()
    resumed = graft.pretrain(resume=tmp_path / "cut", quiet=True)
    a, b = load_file(str(whole.path / "model.safetensors")), load_file(str(resumed.path / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(GraftError, match="give the architecture"):
        graft.pretrain(toy_npz, "supervised")
    with pytest.raises(GraftError, match="unknown objective"):
        graft.pretrain(toy_npz, "rotation", "graft_convnet_s")
