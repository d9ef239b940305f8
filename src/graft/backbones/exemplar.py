"""The three Exemplar-CNN architectures (Dosovitskiy et al. 2014, sec. 4.1), registered into timm.

``64c5-64c5-128f``, ``64c5-128c5-256c5-512f`` and ``92c5-256c5-512c5-1024f``: 5x5 convolutions
(``same`` padding, ReLU), 2x2 max-pooling after the first two, one fully connected layer with
dropout, then the classifier (the surrogate-class softmax while pretraining, a new head on transfer).
The names with dashes (``exemplar-64c5-64c5-128f``) are accepted as aliases of the timm names.
"""
from __future__ import annotations

from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from graft.backbones.small import LinearHead

ARCHITECTURES: dict[str, tuple[tuple[int, ...], int]] = {
    "exemplar_64c5_64c5_128f": ((64, 64), 128),
    "exemplar_64c5_128c5_256c5_512f": ((64, 128, 256), 512),
    "exemplar_92c5_256c5_512c5_1024f": ((92, 256, 512), 1024),
}


def canonical_name(name: str) -> str:
    """``exemplar-64c5-64c5-128f`` -> ``exemplar_64c5_64c5_128f`` (timm names cannot hold dashes)."""
    return name.replace("-", "_") if name.startswith("exemplar-") else name


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {"num_classes": 0, "input_size": (3, 32, 32), "pool_size": None, "crop_pct": 1.0, "interpolation": "bilinear",
            "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "first_conv": "convs.0.0", "classifier": "head", **kwargs}


default_cfgs = generate_default_cfgs({f"{name}.untrained": _cfg() for name in ARCHITECTURES})


class ExemplarNet(LinearHead, nn.Module):
    """Conv(5x5)-ReLU blocks, 2x2 max-pool after the first two, FC-ReLU-dropout, classifier.

    Input (B, 3, H, W). ``forward_features`` -> (B, widths[-1], H/4, W/4). The FC layer sees the map
    adaptively max-pooled to ``fc_grid`` x ``fc_grid`` (8 = a 32 px patch / 4, so at the training
    size it is an ordinary FC layer; other input sizes keep working). ``forward_head(pre_logits=True)``
    -> (B, fc_units).
    """

    def __init__(self, widths: tuple[int, ...] = (64, 64), fc_units: int = 128, num_classes: int = 0, in_chans: int = 3,
                 drop_rate: float = 0.5, fc_grid: int = 8, **kwargs: Any) -> None:
        super().__init__()
        layers = []
        for index, (inputs, outputs) in enumerate(zip((in_chans, *widths), widths)):
            block: list[nn.Module] = [nn.Conv2d(inputs, outputs, 5, padding=2), nn.ReLU(inplace=True)]
            if index < 2:
                block.append(nn.MaxPool2d(2))
            layers.append(nn.Sequential(*block))
        self.convs = nn.Sequential(*layers)
        self.fc_grid = fc_grid
        self.fc = nn.Sequential(nn.Linear(widths[-1] * fc_grid * fc_grid, fc_units), nn.ReLU(inplace=True))
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = fc_units
        self.num_classes = num_classes
        self.head: nn.Module = nn.Linear(fc_units, num_classes) if num_classes > 0 else nn.Identity()

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        # one group per convolution, then the FC layer: top-1 trains FC (and the head), top-2 adds the last conv
        return {"stem": r"^convs\.0\.", "blocks": r"^convs\.(\d+)", "fc": r"^fc"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)

    def forward_fc(self, x: torch.Tensor) -> torch.Tensor:
        """Conv map (B, C, h, w) -> FC activations (B, fc_units), before dropout."""
        x = nn.functional.adaptive_max_pool2d(x, self.fc_grid)
        return self.fc(x.flatten(1))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.forward_fc(x)
        x = nn.functional.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def layer_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every layer but the classifier, for the paper's evaluation protocol: each convolution's ReLU
        map (before its pooling), (B, C_i, H_i, W_i), then the FC activations (B, fc_units)."""
        outputs = []
        for block in self.convs:
            x = block[1](block[0](x))
            outputs.append(x)
            if len(block) > 2:
                x = block[2](x)
        outputs.append(self.forward_fc(x))
        return outputs


def _build(name: str, pretrained: bool, **kwargs: Any) -> ExemplarNet:
    widths, fc_units = ARCHITECTURES[name]
    return build_model_with_cfg(ExemplarNet, name, pretrained, widths=widths, fc_units=fc_units, **kwargs)


@register_model
def exemplar_64c5_64c5_128f(pretrained: bool = False, **kwargs: Any) -> ExemplarNet:
    """64c5-64c5-128f: the small Exemplar-CNN (paper: 69.7% on CIFAR-10(400))."""
    return _build("exemplar_64c5_64c5_128f", pretrained, **kwargs)


@register_model
def exemplar_64c5_128c5_256c5_512f(pretrained: bool = False, **kwargs: Any) -> ExemplarNet:
    """64c5-128c5-256c5-512f: the medium Exemplar-CNN."""
    return _build("exemplar_64c5_128c5_256c5_512f", pretrained, **kwargs)


@register_model
def exemplar_92c5_256c5_512c5_1024f(pretrained: bool = False, **kwargs: Any) -> ExemplarNet:
    """92c5-256c5-512c5-1024f: the large Exemplar-CNN (paper: 76.6% on CIFAR-10(400))."""
    return _build("exemplar_92c5_256c5_512c5_1024f", pretrained, **kwargs)
