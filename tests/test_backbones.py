import pytest
import torch

from graft.backbones import create_model, weights_hash
from graft.errors import GraftError
from graft.train.groups import Stage, backbone_groups, parse_stages, trainable_names

from conftest import MOBILENET_TIMM, MOBILENET_TV, needs_shared


def test_graft_net_is_a_timm_model():
    import timm

    model = create_model("graft_convnet_s", 4, pretrained=False)
    assert timm.is_model("graft_convnet_s")
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 4)
    assert model.forward_head(model.forward_features(torch.randn(2, 3, 16, 16)), pre_logits=True).shape == (2, 128)


def test_offline_hub_error_names_both_ways():
    with pytest.raises(GraftError, match="--weights FILE.*internet"):
        create_model("resnet18", 3, pretrained=True)


def test_unknown_backbone_suggests_names():
    with pytest.raises(GraftError, match="did you mean"):
        create_model("resnet1888", 3)


def test_wrong_weights_file_is_refused_listing_keys(tmp_path):
    from safetensors.torch import save_file

    other = create_model("graft_convnet_m", 3, pretrained=False)
    path = tmp_path / "m.safetensors"
    save_file(other.state_dict(), str(path))
    with pytest.raises(GraftError, match=r"do not fit backbone 'graft_convnet_s'.*(missing|shape)") as error:
        create_model("graft_convnet_s", 3, weights=str(path))
    assert "stem.0.weight" in str(error.value) or "blocks" in str(error.value)


def test_pth_state_dict_with_module_prefix_loads(tmp_path):
    source = create_model("graft_convnet_s", 7, pretrained=False)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, path)
    model = create_model("graft_convnet_s", 3, weights=str(path))
    assert weights_hash(model) == weights_hash(source)
    assert model.get_classifier().out_features == 3


@needs_shared
def test_torchvision_and_timm_mobilenet_give_identical_features():
    timm_model = create_model("mobilenetv2_100", 5, weights=str(MOBILENET_TIMM)).eval()
    tv_model = create_model("tv:mobilenet_v2", 5, weights=str(MOBILENET_TV)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = timm_model.forward_head(timm_model.forward_features(x), pre_logits=True)
        b = tv_model.forward_head(tv_model.forward_features(x), pre_logits=True)
    assert torch.allclose(a, b, atol=1e-5)


@needs_shared
def test_timm_groups_go_stem_to_top():
    model = create_model("mobilenetv2_100", 5, weights=str(MOBILENET_TIMM))
    groups = backbone_groups(model)
    assert groups[0][0].startswith("conv_stem") and any(n.startswith("conv_head") for n in groups[-1])
    assert not any(n.startswith("classifier") for g in groups for n in g)


def test_fallback_groups_by_parameter_order():
    model = create_model("tv:alexnet", 3, pretrained=False)
    groups = backbone_groups(model)
    assert len(groups) >= 4
    flat = [n for g in groups for n in g]
    assert flat == [n for n, _ in model.named_parameters() if not n.startswith("classifier.")]


def test_stage_trainable_sets():
    model = create_model("graft_convnet_s", 3, pretrained=False)
    groups = backbone_groups(model)
    new = trainable_names(model, Stage("new", 1), "train")
    top1 = trainable_names(model, Stage("top-1", 1), "train")
    everything = trainable_names(model, Stage("all", 1), "train")
    assert new == {"head.weight", "head.bias"}
    assert top1 == new | set(groups[-1])
    assert everything == {n for n, _ in model.named_parameters()}
    norms = {f"{m}.{p}" for m, module in model.named_modules() if isinstance(module, torch.nn.BatchNorm2d)
             for p, _ in module.named_parameters(recurse=False)}
    assert norms and trainable_names(model, Stage("all", 1), "eval") == everything - norms
    assert parse_stages("new:1,top-2:3,all:4") == [Stage("new", 1), Stage("top-2", 3), Stage("all", 4)]
    with pytest.raises(GraftError, match="NAME:EPOCHS"):
        parse_stages("everything:3")


def test_new_head_on_pretrained_weights_starts_at_zero_and_predicts_uniformly(tmp_path):
    from safetensors.torch import save_file

    source = create_model("graft_convnet_s", 7, pretrained=False)
    path = tmp_path / "w.safetensors"
    save_file(source.state_dict(), str(path))
    model = create_model("graft_convnet_s", 5, weights=str(path)).eval()
    head = model.get_classifier()
    assert not head.weight.any() and not head.bias.any()
    logits = model(torch.rand(4, 3, 16, 16))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3]))
    assert torch.allclose(loss, torch.log(torch.tensor(5.0)))  # the uniform prediction: loss ln C, whatever the features
    small = create_model("graft_convnet_s", 5, weights=str(path), head_init="small").get_classifier()
    assert 0 < small.weight.abs().max() <= 0.02 and not small.bias.any()
    library = create_model("graft_convnet_s", 5, weights=str(path), head_init="library").get_classifier()
    assert library.weight.abs().max() > 0.02  # the library's own (PyTorch Linear) initialisation, as before


def test_random_network_keeps_its_library_initialisation_and_bad_head_init_is_refused(tmp_path):
    torch.manual_seed(0)
    scratch = create_model("graft_convnet_s", 5, pretrained=False).get_classifier()
    assert scratch.weight.abs().max() > 0.02
    with pytest.raises(GraftError, match=r"unknown head initialisation 'ones' \(model.head_init\).*zeros, small, library"):
        create_model("graft_convnet_s", 5, pretrained=False, head_init="ones")
