"""Backbones through timm's interface: timm names, ``tv:NAME`` torchvision models, graft's own nets, ``run:PATH``."""
from graft.backbones.factory import create_model, head_prefix, load_backbone_weights, read_state_dict, weights_hash

__all__ = ["create_model", "head_prefix", "load_backbone_weights", "read_state_dict", "weights_hash"]
