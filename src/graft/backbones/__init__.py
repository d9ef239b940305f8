"""Backbones through timm's interface: timm names, ``tv:NAME`` torchvision models, graft's own nets, ``run:PATH``."""
from graft.backbones.factory import (HEAD_INITS, create_model, head_prefix, init_new_classifier, load_backbone_weights, read_state_dict,
                                     weights_hash)

__all__ = ["HEAD_INITS", "create_model", "head_prefix", "init_new_classifier", "load_backbone_weights", "read_state_dict", "weights_hash"]
