"""``graft export RUN --format timm``: a folder plain timm loads, with the run's weights and preprocessing.

Written by timm's own ``save_for_hf`` (``model.safetensors`` + ``config.json`` in the Hub layout, class names as
``label_names``, graft's preprocessing as the data config), then loaded back the way a user without graft would and
compared with the run's model. Load it with either::

    timm.create_model("local-dir:RUN/timm", pretrained=True)
    config = json.load(open("RUN/timm/config.json"))
    timm.create_model(config["architecture"], pretrained=True, num_classes=config["num_classes"],
                      pretrained_cfg_overlay=dict(config["pretrained_cfg"], file="RUN/timm/model.safetensors"))

The overlay needs config.json's ``pretrained_cfg``, not only ``file``: with ``file`` alone timm drops a classifier whose
class count differs from the architecture's own pretrained config (1000 for ImageNet models), and its data config
(``timm.data.resolve_data_config``) gives the architecture's preprocessing instead of the run's. Only runs whose model is
a plain timm network qualify; the others are refused, saying why.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import timm
import torch

from graft.errors import GraftError
from graft.runs import Run


def timm_architecture(run: Run) -> str:
    """The timm name of the run's network, or a GraftError saying why plain timm cannot rebuild it."""
    meta, arch = run.meta, str(run.meta["backbone"])
    head = (meta.get("info") or {}).get("head") or {}
    if head.get("kind") == "grow":
        raise GraftError(f"{run.path}: a grown network ({meta['route']}) has units hooked into {arch} that timm's {arch} lacks; "
                         "export it with --format onnx or torchscript")
    if head:
        raise GraftError(f"{run.path}: route {meta['route']} replaced the classifier by adaptation layers (FCa, FCb) that timm's "
                         f"{arch} lacks; export it with --format onnx or torchscript")
    if arch.startswith("tv:") or not timm.is_model(arch):
        raise GraftError(f"{run.path}: backbone '{arch}' is not a timm architecture; export it with --format onnx or torchscript")
    return arch


def export_timm(run: Run, out: Optional[Path], atol: float) -> dict[str, Any]:
    """Write ``model.safetensors`` + ``config.json`` to ``out`` (default RUN/timm) and check plain timm's logits match."""
    from timm.models import save_for_hf

    arch = timm_architecture(run)
    model = run.model.eval()
    classes = len(run.classes)
    try:  # the run's tensors must be exactly timm's for this architecture and class count
        timm.create_model(arch, pretrained=False, num_classes=classes).load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as error:
        raise GraftError(f"{run.path}: its weights are not timm's {arch} with {classes} classes ({str(error).splitlines()[0]}); "
                         "export it with --format onnx or torchscript") from error
    out = Path(out) if out else run.path / "timm"
    pre = run.preprocessing
    data_config = {"input_size": (3, pre.size, pre.size), "interpolation": pre.interpolation or "bilinear", "crop_pct": pre.crop_pct,
                   "crop_mode": "center", "mean": tuple(pre.mean), "std": tuple(pre.std)}
    save_for_hf(model, str(out), model_config={"label_names": list(run.classes)}, safe_serialization=True, data_config=data_config)
    config = json.loads((out / "config.json").read_text())
    loaded = timm.create_model(arch, pretrained=True, num_classes=classes,  # as a user without graft would
                               pretrained_cfg_overlay=dict(config["pretrained_cfg"], file=str(out / "model.safetensors"))).eval()
    example = torch.randn(2, 3, pre.size, pre.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = float(np.abs(loaded(example).numpy() - model(example).numpy()).max())
    needs_graft = type(model).__module__.startswith("graft")  # graft's own nets are registered into timm by `import graft`
    return {"path": str(out), "format": "timm", "architecture": arch, "num_classes": classes, "max_abs_difference": difference,
            "matches": difference <= atol, "atol": atol, "needs_import_graft": needs_graft,
            "load": f"timm.create_model('local-dir:{out}', pretrained=True)"}
