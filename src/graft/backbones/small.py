"""graft's own small networks, registered into timm's model registry.

They follow timm's interface (``forward_features``/``forward_head``/``reset_classifier``/
``group_matcher``/``pretrained_cfg``), so every route treats them like any timm model.
"""
from __future__ import annotations

from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {"num_classes": 10, "input_size": (3, 32, 32), "pool_size": None, "crop_pct": 1.0,
            "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
            "first_conv": "stem.0", "classifier": "head", **kwargs}


default_cfgs = generate_default_cfgs({"graft_convnet_s.untrained": _cfg(), "graft_convnet_m.untrained": _cfg()})


def _block(inputs: int, outputs: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class LinearHead:
    """timm's classifier interface for graft's nets: one ``head`` Linear on ``num_features`` (Identity for 0 classes)."""

    num_features: int

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


class ConvNet(LinearHead, nn.Module):
    """A plain VGG-style net: 3x3 conv-BN-ReLU blocks, 2x2 max-pool after all but the last, global average pool.

    Input (B, 3, H, W) with H, W >= 2**(len(widths)-1); features (B, widths[-1]).
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), num_classes: int = 10, in_chans: int = 3,
                 drop_rate: float = 0.2, **kwargs: Any) -> None:
        super().__init__()
        self.stem = _block(in_chans, widths[0], pool=True)
        self.blocks = nn.Sequential(*[_block(a, b, pool=i < len(widths) - 2) for i, (a, b) in enumerate(zip(widths, widths[1:]))])
        self.num_features = self.head_hidden_size = widths[-1]
        self.drop_rate = drop_rate
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.num_classes = num_classes

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {"stem": r"^stem", "blocks": r"^blocks\.(\d+)"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        x = nn.functional.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def graft_convnet_s(pretrained: bool = False, **kwargs: Any) -> ConvNet:
    """Small 3-block net (32-64-128) for 8-32 px images, e.g. the digits demo."""
    return build_model_with_cfg(ConvNet, "graft_convnet_s", pretrained, widths=(32, 64, 128), **kwargs)


@register_model
def graft_convnet_m(pretrained: bool = False, **kwargs: Any) -> ConvNet:
    """Medium 4-block net (64-128-256-512) for 32-64 px images."""
    return build_model_with_cfg(ConvNet, "graft_convnet_m", pretrained, widths=(64, 128, 256, 512), **kwargs)
