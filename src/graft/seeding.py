"""Every random draw made before training is a function of (seed, purpose), not of what ran before it.

A fresh run builds a throwaway model to check the weights before its folder exists; a resumed run does not.
If the initial weights came from the global generator's position, a run killed in its first epoch would
resume from a different initialisation. Seeding each draw from its purpose makes both draw the same numbers.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator

import torch


def purpose_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed derived from the run's ``seed`` and a name for what it is used for."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:8], "little") >> 1


@contextlib.contextmanager
def seeded(seed: int, purpose: str) -> Iterator[None]:
    """Run the block with torch's CPU generator seeded from (seed, purpose), the outer generator state left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(purpose_seed(seed, purpose))
        yield
