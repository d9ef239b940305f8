"""Small AlexNet-style networks (five conv layers, then ``fc6`` and ``fc7``), registered into timm's model registry.

Wang, Ramanan, Hebert, "Growing a Brain" (CVPR 2017) grow AlexNet's FC6/FC7 and name their scenarios
after them (New / FC7-New / FC6-New / All). These nets keep that layout at CPU scale, so the
scenarios map onto graft's stages: ``top-1`` trains fc7 + head, ``top-2`` fc6 + fc7 + head.

Layout (Krizhevsky et al. 2012, scaled down): conv1 5x5 (stride 2 for 64 px input) + pool, conv2 3x3 + pool,
conv3, conv4, conv5 3x3 + pool, adaptive 4x4 average pool, fc6 and fc7 (Linear + ReLU + Dropout 0.5),
classifier ``head``. BatchNorm after each conv replaces LRN so the nets train from scratch in a few CPU epochs.
``forward_features`` returns the conv5 map (B, C5, h, w); ``forward_head(pre_logits=True)`` returns fc7's
output (B, fc_width), the representation the head (and the linear probe) sees.
"""
from __future__ import annotations

from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from graft.backbones.small import LinearHead


def _cfg(size: int) -> dict[str, Any]:
    return {"num_classes": 10, "input_size": (3, size, size), "pool_size": None, "crop_pct": 1.0,
            "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
            "first_conv": "conv1.0", "classifier": "head"}


default_cfgs = generate_default_cfgs({"graft_alexnet_32.untrained": _cfg(32), "graft_alexnet_64.untrained": _cfg(64)})


def _conv(inputs: int, outputs: int, kernel: int, stride: int = 1, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(inputs, outputs, kernel, stride, padding=kernel // 2, bias=False),
                               nn.BatchNorm2d(outputs), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def fully_connected(inputs: int, outputs: int, drop_rate: float) -> nn.Sequential:
    """AlexNet's FC block: Linear + ReLU + Dropout (indices 0, 1, 2)."""
    return nn.Sequential(nn.Linear(inputs, outputs), nn.ReLU(inplace=True), nn.Dropout(drop_rate))


class AlexNetSmall(LinearHead, nn.Module):
    """Five conv layers, ``fc6``, ``fc7``, ``head``; any input of at least 8 px (32 px nets) or 16 px (64 px nets)."""

    def __init__(self, widths: tuple[int, int, int, int, int] = (48, 96, 128, 128, 96), fc_width: int = 512,
                 first_stride: int = 1, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.5,
                 **kwargs: Any) -> None:
        super().__init__()
        self.conv1 = _conv(in_chans, widths[0], 5, first_stride, pool=True)
        self.conv2 = _conv(widths[0], widths[1], 3, pool=True)
        self.conv3 = _conv(widths[1], widths[2], 3)
        self.conv4 = _conv(widths[2], widths[3], 3)
        self.conv5 = _conv(widths[3], widths[4], 3, pool=True)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc6 = fully_connected(widths[4] * 16, fc_width, drop_rate)
        self.fc7 = fully_connected(fc_width, fc_width, drop_rate)
        self.num_features = self.head_hidden_size = fc_width
        self.num_classes = num_classes
        self.head = nn.Linear(fc_width, num_classes) if num_classes > 0 else nn.Identity()

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Groups bottom to top: conv1 .. conv5, fc6, fc7 (so ``top-1`` = fc7, ``top-2`` = fc6 + fc7)."""
        return {"stem": r"^conv1\.", "blocks": [(r"^conv(\d+)\.", None), (r"^fc(\d+)\.", None)]}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C5, H', W') conv5 map."""
        return self.conv5(self.conv4(self.conv3(self.conv2(self.conv1(x)))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """conv5 map -> fc7 output (B, fc_width) if ``pre_logits`` else logits (B, num_classes)."""
        x = self.fc7(self.fc6(torch.flatten(self.pool(x), 1)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def graft_alexnet_32(pretrained: bool = False, **kwargs: Any) -> AlexNetSmall:
    """AlexNet-style net for 32 px images (CIFAR): conv 48-96-128-128-96, fc6/fc7 512."""
    return build_model_with_cfg(AlexNetSmall, "graft_alexnet_32", pretrained, widths=(48, 96, 128, 128, 96),
                                fc_width=512, first_stride=1, **kwargs)


@register_model
def graft_alexnet_64(pretrained: bool = False, **kwargs: Any) -> AlexNetSmall:
    """AlexNet-style net for 64 px images: stride-2 conv1, conv 64-128-192-192-128, fc6/fc7 1024."""
    return build_model_with_cfg(AlexNetSmall, "graft_alexnet_64", pretrained, widths=(64, 128, 192, 192, 128),
                                fc_width=1024, first_stride=2, **kwargs)
