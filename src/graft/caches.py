"""Where graft keeps what it can compute again (extracted features, windows, image-header scans)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$GRAFT_CACHE`` or ``~/.cache/graft``."""
    return Path(os.environ.get("GRAFT_CACHE") or Path.home() / ".cache" / "graft")


__all__ = ["cache_dir"]
