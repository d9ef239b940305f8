"""Create a classifier for any backbone name and load its weights, refusing weights that do not fit.

Names: a timm model (``mobilenetv2_100``), a torchvision model (``tv:mobilenet_v2``),
graft's own nets (``graft_convnet_s``), or a graft run (``run:PATH``: its backbone and weights).
"""
from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Optional

import timm
import torch
from torch import nn

from graft.errors import GraftError

WEIGHTS_HELP = "pass --weights FILE (.safetensors or .pth state dict, or a graft run directory), or connect to the internet so the hub can be reached"


def head_prefix(model: nn.Module) -> str:
    """State-dict prefix of the classifier (``classifier.``, ``fc.``, ``head.fc.`` ...)."""
    name = getattr(model, "pretrained_cfg", {}).get("classifier", "classifier")
    return name + "."


def weights_hash(model: nn.Module, include_head: bool = False) -> str:
    """sha256 over the backbone's tensors (names, shapes and bytes); the head is left out by default."""
    digest = hashlib.sha256()
    prefix = head_prefix(model)
    for name, tensor in model.state_dict().items():
        if not include_head and name.startswith(prefix):
            continue
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, a .pth/.pt/.bin state dict, or a graft run's model."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.exists():
        raise GraftError(f"{path}: weights file not found; {WEIGHTS_HELP}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
            state = torch.load(path, map_location="cpu", weights_only=True)
            for key in ("state_dict", "model", "model_state_dict"):
                if isinstance(state, dict) and isinstance(state.get(key), dict):
                    state = state[key]
        else:
            raise GraftError(f"{path}: unknown weights format '{path.suffix}'; use .safetensors or a .pth state dict")
    except GraftError:
        raise
    except Exception as error:  # noqa: BLE001 - any reader failure means the same to the user
        raise GraftError(f"{path}: cannot read weights ({type(error).__name__}: {error}); give a .safetensors or .pth state dict") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GraftError(f"{path}: not a state dict of tensors; save model.state_dict()")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _short(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str, backbone: str) -> None:
    """Load everything but the classifier from ``state``; refuse (before any training) if keys or shapes differ."""
    prefix = head_prefix(model)
    weights_prefix = getattr(model, "weights_prefix", "")
    if weights_prefix and not any(k.startswith(weights_prefix) for k in state):
        state = {weights_prefix + k: v for k, v in state.items()}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(prefix)}
    # the file's own classifier (any head naming) is dropped: the target task gets a new head
    given = {k: v for k, v in state.items() if not k.startswith(prefix) and k not in _source_head_keys(state, own)}
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    mismatched = [f"{k} {tuple(given[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(set(own) & set(given)) if given[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_short(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_short(unexpected)})")
        if mismatched:
            parts.append(f"{len(mismatched)} of another shape, file vs model ({_short(mismatched, 3)})")
        raise GraftError(f"{source}: weights do not fit backbone '{backbone}': {'; '.join(parts)}. Pass the backbone these weights were saved from, or the right file")
    model.load_state_dict(given, strict=False)


def _source_head_keys(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> set[str]:
    """Keys of the file's classifier: the trailing 2-D weight (and its bias) that the model does not have."""
    extra = [k for k in state if k not in own]
    heads = {k for k in extra if k.endswith(".weight") and state[k].ndim == 2}
    return heads | {k[: -len("weight")] + "bias" for k in heads}


def _run_backbone(path: Path) -> tuple[str, Path]:
    meta = path / "model.json"
    if not meta.exists():
        raise GraftError(f"{path}: not a finished graft run (no model.json); give a run directory written by `graft fit` or `graft pretrain`")
    return json.loads(meta.read_text())["backbone"], path


def resolve_backbone(name: str, weights: Optional[str]) -> tuple[str, Optional[str]]:
    """``run:PATH`` -> (that run's backbone, its weights); other names pass through."""
    if name.startswith("run:"):
        backbone, path = _run_backbone(Path(name[4:]))
        return backbone, weights or str(path)
    if weights and Path(weights).is_dir():
        _run_backbone(Path(weights))
    return name, weights


def _build(name: str, num_classes: int, pretrained: bool) -> nn.Module:
    if name.startswith("tv:"):
        from graft.backbones.torchvision_adapter import TorchvisionBackbone, load_torchvision_hub_weights

        model = TorchvisionBackbone(name[3:], num_classes)
        if pretrained:
            load_torchvision_hub_weights(model, name[3:])
        return model
    import graft.backbones.alexnet  # noqa: F401 - registers graft's nets with timm
    import graft.backbones.small  # noqa: F401
    from graft.backbones.exemplar import canonical_name  # also registers the Exemplar-CNN nets

    name = canonical_name(name)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models() + ["tv:" + n for n in _tv_names()], n=3)
        raise GraftError(f"unknown backbone '{name}'" + (f"; did you mean {', '.join(close)}?" if close else "; give a timm name, tv:NAME or run:PATH"))
    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes)


def _tv_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


HEAD_INITS = ("zeros", "small", "library")


def _check_head_init(how: str) -> None:
    if how not in HEAD_INITS:
        raise GraftError(f"unknown head initialisation '{how}' (model.head_init); choose one of {', '.join(HEAD_INITS)}")


def init_new_classifier(layer: nn.Module, how: str = "zeros") -> nn.Module:
    """Start a new classifier (the Linear that gives the logits) small, so a fresh head adds no noise to pretrained features.

    Libraries initialise classifiers for training from scratch: timm's EfficientNet family (MobileNetV2 included)
    draws them uniformly in +-1/sqrt(classes), which on 1,280 pooled features gives a first loss of 12.3 on 10
    classes (ln 10 = 2.3), and fine-tuning spends its first steps undoing that. ``zeros`` (weight and bias 0: every
    class equally likely, the first gradient still differs per class) or ``small`` (truncated normal, std 0.01, as
    DeiT/MAE heads) start near the uniform prediction; ``library`` keeps the library's initialisation.
    """
    _check_head_init(how)
    if how == "library" or not isinstance(layer, nn.Linear):
        return layer
    with torch.no_grad():
        if how == "zeros":
            layer.weight.zero_()
        else:
            nn.init.trunc_normal_(layer.weight, std=0.01, a=-0.02, b=0.02)
        if layer.bias is not None:
            layer.bias.zero_()
    return layer


def create_model(name: str, num_classes: int, weights: Optional[str] = None, pretrained: bool = True, head_init: str = "zeros") -> nn.Module:
    """A classifier with a new ``num_classes`` head on backbone ``name``.

    ``weights`` (file or run) always wins; else ``pretrained`` asks the hub; if that fails,
    one error names both ways to get weights. The new head on pretrained weights starts as ``head_init``
    (:func:`init_new_classifier`); a randomly initialised network keeps its library's initialisation throughout.
    """
    _check_head_init(head_init)  # refused before any weights are read
    name, weights = resolve_backbone(name, weights)
    if weights:
        model = _build(name, num_classes, pretrained=False)
        load_backbone_weights(model, read_state_dict(weights), weights, name)
    elif not pretrained:
        return _build(name, num_classes, pretrained=False)
    elif name.startswith("graft_"):
        raise GraftError(f"'{name}' is a graft net with no published weights; pass --weights RUN_OR_FILE (e.g. from `graft pretrain`) or use --no-pretrained")
    else:
        try:
            model = _build(name, num_classes, pretrained=True)
        except GraftError:
            raise
        except Exception as error:  # noqa: BLE001 - hub/network failures come in many types
            raise GraftError(f"cannot get pretrained weights for '{name}' ({type(error).__name__}); {WEIGHTS_HELP}") from error
    if num_classes > 0:
        init_new_classifier(model.get_classifier(), head_init)
    return model
