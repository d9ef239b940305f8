"""Export a finished run to ONNX, TorchScript or a timm folder, and check the copy computes what PyTorch computes."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from graft.ensembles import FlipAverage
from graft.errors import GraftError
from graft.routes import find_route
from graft.runs import Run, load_run


def export(run: str | Path | Run, format: str = "onnx", out: Optional[str | Path] = None, atol: float = 1e-4) -> dict[str, Any]:
    """Export to ONNX, TorchScript or a timm folder (``format="timm"``) and check the exported outputs match PyTorch's within ``atol``.

    The exported network answers what `graft predict` scores; a route whose answer one network cannot give
    (its spec's ``export`` hook) is refused with the reason."""
    run = run if isinstance(run, Run) else load_run(run)
    return export_model(run, format, Path(out) if out else None, atol)


def export_model(run: Run, format: str, out: Optional[Path], atol: float) -> dict[str, Any]:
    """Write the model (input: normalised (B, 3, S, S) float32 batch; output: logits) and compare outputs.

    ``format="timm"`` writes a folder plain timm loads instead (:mod:`graft.timm_export`)."""
    if not (isinstance(atol, (int, float)) and math.isfinite(atol) and atol >= 0):
        raise GraftError(f"--atol {atol}: the tolerance must be a finite number >= 0, e.g. --atol 1e-4")
    spec = find_route(run.meta["route"])
    # the route's export hook gives the network that answers what `graft predict` answers, or refuses with the reason
    model = spec.export(run) if spec is not None and spec.export is not None else run.model
    if run.meta.get("tta") == "flip":  # the run answers with flip averaging (route auto chose it on validation): so does the copy
        model = FlipAverage(model)
    if format == "timm" and (run.meta.get("ensemble") or run.meta.get("tta") == "flip"):
        what = "an ensemble of several networks" if run.meta.get("ensemble") else "averaged over each image and its mirror image"
        raise GraftError(f"{run.path}: its answer is {what}, which one plain timm network cannot give; "
                         "export it with --format onnx or torchscript (one graph holding all of it)")
    if format == "timm":
        from graft.timm_export import export_timm

        return export_timm(run, out, atol)
    if out is not None and (out.is_dir() or not out.parent.is_dir()):
        problem = "is a folder" if out.is_dir() else f"is in a missing folder {out.parent}"
        raise GraftError(f"--out {out}: {problem}; give a file path in an existing folder (e.g. --out {run.path}/model.onnx)")
    model = model.eval().to(memory_format=torch.contiguous_format)
    size = run.preprocessing.size
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(example).numpy()
    if format == "onnx":
        out = out or run.path / "model.onnx"
        try:
            import onnxruntime
        except ImportError as error:
            raise GraftError("ONNX export needs onnx and onnxruntime: pip install 'graft-learn[export]'") from error
        try:
            torch.onnx.export(model, (example,), str(out), input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
        except torch.onnx.errors.OnnxExporterError:
            # the TorchScript exporter cannot express some ops (adaptive pooling to a size that does not divide the
            # input, e.g. a 32-px net run at 16 px); torch.export-based ONNX export can, with the batch kept dynamic
            torch.onnx.export(model, (example,), str(out), input_names=["images"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False)
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": example.numpy()})[0]
    elif format == "torchscript":
        out = out or run.path / "model.torchscript.pt"
        with torch.no_grad():
            traced = torch.jit.trace(model, example)
        traced.save(str(out))
        with torch.no_grad():
            got = torch.jit.load(str(out))(example).numpy()
    else:
        raise GraftError(f"unknown export format '{format}'; choose onnx, torchscript or timm")
    difference = float(np.abs(got - expected).max())
    return {"path": str(out), "format": format, "max_abs_difference": difference, "matches": difference <= atol, "atol": atol,
            "input": {"shape": ["batch", 3, size, size], "mean": run.preprocessing.mean, "std": run.preprocessing.std}}
