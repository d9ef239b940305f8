"""graft's AlexNet-style nets: timm interface, output sizes, fc6/fc7 as the top two stage groups."""
import pytest
import torch

from graft.backbones import create_model
from graft.train.groups import Stage, backbone_groups, trainable_names


@pytest.mark.parametrize("name, size, width", [("graft_alexnet_32", 32, 512), ("graft_alexnet_64", 64, 1024)])
def test_alexnet_output_sizes(name, size, width):
    import timm

    model = create_model(name, 7, pretrained=False).eval()
    assert timm.is_model(name)
    assert timm.data.resolve_model_data_config(model)["input_size"] == (3, size, size)
    x = torch.randn(2, 3, size, size)
    features = model.forward_features(x)
    assert features.ndim == 4 and features.shape[:2] == (2, model.conv5[0].out_channels)
    assert model.forward_head(features, pre_logits=True).shape == (2, width)
    assert model(x).shape == (2, 7)
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 7)  # adaptive pooling: small test images work too
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model(x).shape == (2, 3)


def test_alexnet_fc_layers_are_linear_relu_dropout():
    model = create_model("graft_alexnet_32", 5, pretrained=False)
    for block in (model.fc6, model.fc7):
        assert [type(m) for m in block] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Dropout]
    assert model.fc7[0].out_features == model.head.in_features


def test_alexnet_top_groups_are_fc7_then_fc6():
    model = create_model("graft_alexnet_32", 5, pretrained=False)
    groups = backbone_groups(model)
    assert len(groups) == 7
    assert groups[0][0].startswith("conv1.") and all(n.startswith("conv5.") for n in groups[4])
    head = {"head.weight", "head.bias"}
    fc6, fc7 = {"fc6.0.weight", "fc6.0.bias"}, {"fc7.0.weight", "fc7.0.bias"}
    assert trainable_names(model, Stage("new", 1), "eval") == head
    assert trainable_names(model, Stage("top-1", 1), "eval") == head | fc7
    assert trainable_names(model, Stage("top-2", 1), "eval") == head | fc7 | fc6
    assert trainable_names(model, Stage("all", 1), "train") == {n for n, _ in model.named_parameters()}


def test_alexnet_run_is_a_backbone_for_staged_finetuning(toy_npz, tmp_path):
    import graft

    from conftest import FAST

    source = graft.fit(toy_npz, route="scratch", backbone="graft_alexnet_32", out=tmp_path / "src", quiet=True,
                       overrides=[*FAST, "train.stages=all:1"])
    before = create_model(f"run:{source.path}", 3).state_dict()
    target = graft.fit(toy_npz, route="finetune", backbone=f"run:{source.path}", out=tmp_path / "tgt", quiet=True,
                       overrides=[*FAST, "train.stages=top-1:1", "data.val_fraction=0"])
    after = target.model.state_dict()
    changed = {k for k in before if not k.startswith("head.") and not torch.equal(before[k], after[k])}
    assert changed == {"fc7.0.weight", "fc7.0.bias"}
