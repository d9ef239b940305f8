"""Any torchvision classification model behind timm's interface (``tv:NAME``).

The torchvision module is kept whole under ``body`` (so torchvision weight files load
with their own key names, prefixed ``body.``); its last Linear is replaced by an
Identity and a new head ``classifier`` is put on the pooled features.
"""
from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import nn

from graft.errors import GraftError

HEAD_ATTRIBUTES = ("fc", "classifier", "heads", "head")
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def _last_linear(module: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """(parent, attribute, linear) of the last nn.Linear inside ``module`` (or module itself)."""
    if isinstance(module, nn.Linear):
        raise ValueError("module is itself the Linear")
    found = None
    for name, child in module.named_modules():
        if isinstance(child, nn.Linear):
            found = name
    if found is None:
        raise GraftError("torchvision model has no Linear classifier graft can replace")
    *path, attribute = found.split(".")
    parent = module.get_submodule(".".join(path)) if path else module
    return parent, attribute, getattr(parent, attribute)


class TorchvisionBackbone(nn.Module):
    """timm-style wrapper: ``forward_features`` gives pooled (B, D) features, ``forward_head`` the logits."""

    weights_prefix = "body."

    def __init__(self, name: str, num_classes: int) -> None:
        super().__init__()
        try:
            body = torchvision.models.get_model(name, weights=None)
        except ValueError as error:
            raise GraftError(f"unknown torchvision model 'tv:{name}'; see torchvision.models.list_models()") from error
        for attribute in HEAD_ATTRIBUTES:
            head = getattr(body, attribute, None)
            if head is None:
                continue
            if isinstance(head, nn.Linear):
                linear = head
                setattr(body, attribute, nn.Identity())
            else:
                parent, leaf, linear = _last_linear(head)
                setattr(parent, leaf, nn.Identity())
            break
        else:
            raise GraftError(f"tv:{name}: no classifier attribute among {HEAD_ATTRIBUTES}")
        self.body = body
        self.num_features = self.head_hidden_size = linear.in_features
        self.num_classes = num_classes
        self.classifier: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = {"architecture": f"tv:{name}", "input_size": (3, 224, 224), "interpolation": "bilinear",
                               "crop_pct": 0.875, "classifier": "classifier", **IMAGENET}
        self.default_cfg = self.pretrained_cfg

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body(x)
        return features.logits if hasattr(features, "logits") else features

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def load_torchvision_hub_weights(model: TorchvisionBackbone, name: str) -> None:
    """torchvision's default published weights (needs the internet once)."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    state: dict[str, Any] = weights.get_state_dict(progress=False)
    own = model.body.state_dict()
    model.body.load_state_dict({k: v for k, v in state.items() if k in own and own[k].shape == v.shape}, strict=False)
