"""Where forward passes run and in which precision: the run lifecycle's device and precision as a value.

Every inference-mode forward pass (feature extraction, windows, teacher logits, evaluation, prediction,
analysis, advice) takes a :class:`Placement`; :mod:`graft.lifecycle` builds it from its Lightning Fabric
object, so training and inference share one device, one precision setting and one rule for loader workers
(:func:`default_workers`) and CPU threads (:func:`default_threads`).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

# Lightning's precision names -> the autocast dtype of their forward passes ("-true" ones cast the weights in training;
# for inference, autocast to the same dtype gives the same arithmetic without changing the caller's model)
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "bf16": torch.bfloat16,
                   "16-mixed": torch.float16, "16-true": torch.float16, "16": torch.float16}
FULL_PRECISIONS = ("32-true", "32", "64-true", "64")
MAX_WORKERS = 8  # beyond this, decoding outpaces any single model on one device and workers only cost memory


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity set: a container's or taskset's limit, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def default_workers(in_memory: bool, cores: int, processes: int = 1) -> int:
    """Loader worker processes when ``data.num_workers`` is unset.

    In-memory arrays (.npz): 0, since there is nothing to decode and a worker would only add an inter-process copy
    of every batch. Files that need decoding: one worker per core left over after the processes that run the model
    (``processes``: ranks on this machine), at most :data:`MAX_WORKERS`; on 2 cores and one process that is 1.
    """
    if in_memory:
        return 0
    return max(0, min(cores // max(processes, 1) - 1, MAX_WORKERS))


def default_threads(cores: int, processes: int = 1, ceiling: Optional[int] = None) -> int:
    """torch intra-op threads when ``runtime.threads`` is unset: the usable cores shared among this machine's ranks,
    never more than ``ceiling`` (torch's own default, which honours OMP_NUM_THREADS and counts physical cores)."""
    share = max(1, cores // max(processes, 1))
    return share if ceiling is None else max(1, min(share, ceiling))


def set_threads(threads: Optional[int], processes: int = 1) -> int:
    """Set torch's intra-op threads: ``threads`` (``--threads``) when given, else :func:`default_threads`; returns them."""
    chosen = threads or default_threads(usable_cores(), processes, torch.get_num_threads())
    torch.set_num_threads(chosen)
    return chosen


def collate_readable(items: list[Any]) -> Any:
    """torch's default collate of the items that are not None; None when none is left. A dataset returns None for an
    image whose body failed to decode (:class:`graft.data.transforms.TransformedImages`), which then leaves its batch
    here, in the loader worker, while the dataset records which image it was."""
    kept = [item for item in items if item is not None]
    return default_collate(kept) if kept else None


def holds_files(images: Any) -> bool:
    """True when ``images`` (an ImageSet, or a dataset wrapping one as ``.images``) is read from files, not arrays."""
    images = getattr(images, "images", images)
    return getattr(images, "arrays", None) is None and getattr(images, "paths", None) is not None


@dataclass(frozen=True)
class Placement:
    """A device and a Lightning precision name; ``device=None``: wherever the model already is (no move)."""

    device: Optional[torch.device] = None
    precision: str = "32-true"
    num_workers: Optional[int] = None  # loader workers; None: :func:`default_workers`
    processes: int = 1  # processes (ranks) sharing this machine's cores

    @classmethod
    def for_fabric(cls, fabric: Any, precision: str, num_workers: Optional[int] = None) -> "Placement":
        """Fabric's device under ``precision``; its ranks share this machine's cores (one node)."""
        return cls(fabric.device, precision, num_workers, fabric.world_size)

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

    def workers(self, dataset: Dataset, batches: Optional[int] = None) -> int:
        """Loader workers for ``dataset``: ``num_workers`` when set, else :func:`default_workers`; never more than
        ``batches`` (a worker that would get no batch only costs its start-up)."""
        count = self.num_workers if self.num_workers is not None else default_workers(not holds_files(dataset), usable_cores(), self.processes)
        return count if batches is None else min(count, batches)

    def loader(self, dataset: Dataset, batch_size: int, persistent: bool = False, **options: Any) -> DataLoader:
        """A DataLoader with this placement's workers (decoding and transforms run in them) and pinned memory on CUDA;
        ``persistent``: workers stay alive between epochs (a loader iterated more than once, as in training). Items that
        are None (images that did not decode) are dropped from their batch (:func:`collate_readable`): a batch is None
        when all of its items were."""
        batches = -(-len(dataset) // batch_size) if hasattr(dataset, "__len__") else None  # type: ignore[arg-type]
        workers = self.workers(dataset, batches)
        options.setdefault("collate_fn", collate_readable)
        return DataLoader(dataset, batch_size=batch_size, num_workers=workers, persistent_workers=persistent and workers > 0,
                          pin_memory=self.pin_memory, **options)

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


class Shard:
    """This rank's share of an extraction under DDP, through Lightning Fabric's collectives: rank r of W runs images
    r, r+W, r+2W, ... (strided: shares differ by at most one image) and :meth:`gather_rows` puts every rank's rows
    back in the original order on every rank. ``Shard()`` (no Fabric, or one process) is the whole set."""

    def __init__(self, fabric: Any = None) -> None:
        self.fabric = fabric
        self.rank = int(fabric.global_rank) if fabric is not None else 0
        self.world_size = int(fabric.world_size) if fabric is not None else 1
        self.processed = 0  # images this rank ran through the model (the run's `features` event records it)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def indices(self, count: int) -> np.ndarray:
        return np.arange(self.rank, count, self.world_size)

    def all_true(self, flag: bool) -> bool:
        """``flag`` on every rank (e.g. "the cache file exists"), so all ranks take the same branch of a collective."""
        if not self.active:
            return flag
        return bool(self.fabric.all_reduce(torch.tensor(int(flag), device=self.fabric.device), reduce_op="min").item() > 0)

    def counts(self, value: int) -> list[int]:
        """``value`` of every rank, in rank order."""
        if not self.active:
            return [value]
        return [int(v) for v in self.fabric.all_gather(torch.tensor(value, device=self.fabric.device)).reshape(-1).tolist()]

    def barrier(self) -> None:
        if self.active:
            self.fabric.barrier()

    def gather_rows(self, local: np.ndarray, out: np.ndarray, chunk_rows: int = 4096) -> None:
        """Write every rank's ``local`` rows (its :meth:`indices` of ``len(out)``) into ``out`` in the original order,
        ``chunk_rows`` per rank at a time (what is in flight stays small when ``out`` is a memory-mapped file)."""
        count = len(out)
        per_rank = -(-count // self.world_size)
        for start in range(0, per_rank, chunk_rows):
            rows = min(chunk_rows, per_rank - start)
            block = np.zeros((rows, *out.shape[1:]), np.float32)  # padded: all_gather needs one shape on every rank
            mine = local[start:start + rows]
            block[:len(mine)] = mine
            gathered = self.fabric.all_gather(torch.from_numpy(block).to(self.fabric.device)).cpu().numpy()
            for rank in range(self.world_size):
                positions = np.arange(rank, count, self.world_size)[start:start + rows]
                out[positions] = gathered[rank, :len(positions)]


__all__ = ["Placement", "Shard", "AUTOCAST_DTYPES", "collate_readable", "default_threads", "default_workers", "set_threads", "usable_cores"]
