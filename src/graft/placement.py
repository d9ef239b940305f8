"""Where forward passes run and in which precision: the run lifecycle's device and precision as a value.

Every inference-mode forward pass (feature extraction, windows, teacher logits, evaluation, prediction,
analysis, advice) takes a :class:`Placement`; :mod:`graft.lifecycle` builds it from its Lightning Fabric
object, so training and inference share one device and one precision setting.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import nn

# Lightning's precision names -> the autocast dtype of their forward passes ("-true" ones cast the weights in training;
# for inference, autocast to the same dtype gives the same arithmetic without changing the caller's model)
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "bf16": torch.bfloat16,
                   "16-mixed": torch.float16, "16-true": torch.float16, "16": torch.float16}
FULL_PRECISIONS = ("32-true", "32", "64-true", "64")


@dataclass(frozen=True)
class Placement:
    """A device and a Lightning precision name; ``device=None``: wherever the model already is (no move)."""

    device: Optional[torch.device] = None
    precision: str = "32-true"

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        return AUTOCAST_DTYPES.get(str(self.precision))

    @property
    def full_precision(self) -> bool:
        """True when outputs are the float32 arithmetic of the model (cached features may be shared)."""
        return self.autocast_dtype is None

    def target(self, model: nn.Module) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        parameter = next(model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    @property
    def pin_memory(self) -> bool:
        """Pinned host memory makes host-to-GPU copies asynchronous (``non_blocking``); useless elsewhere."""
        return self.device is not None and torch.device(self.device).type == "cuda"

    def to_device(self, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
        return batch.to(device, non_blocking=device.type == "cuda")

    @contextlib.contextmanager
    def autocast(self, device: torch.device) -> Iterator[None]:
        """torch.autocast under a mixed/low precision (as Fabric's precision plugin does in training); nothing at 32 bits."""
        dtype = self.autocast_dtype
        if dtype is None:
            yield
            return
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield

    @contextlib.contextmanager
    def running(self, model: nn.Module) -> Iterator[torch.device]:
        """``model`` moved to this placement's device in eval mode under autocast; its device and mode restored after."""
        original = next(model.parameters(), None)
        original_device = original.device if original is not None else None
        was_training = model.training
        device = self.target(model)
        model.to(device).eval()
        try:
            with self.autocast(device):
                yield device
        finally:
            model.train(was_training)
            if original_device is not None and original_device != device:
                model.to(original_device)

    def cache_tag(self) -> list[str]:
        """What a feature cache key adds for this placement: nothing at full precision (keys stay as they were)."""
        return [] if self.full_precision else [f"precision={self.precision}"]


__all__ = ["Placement", "AUTOCAST_DTYPES"]
