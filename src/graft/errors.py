"""The one exception graft raises for bad input: a one-line message naming the file and the fix."""
from __future__ import annotations

from typing import Optional


class GraftError(Exception):
    """User-facing error. The CLI prints ``str(error)`` on one line and exits with status 2.

    ``key``: the recipe key at fault, when there is one, so the CLI can name its flag too.
    """

    def __init__(self, message: str, key: Optional[str] = None) -> None:
        super().__init__(message)
        self.key = key
