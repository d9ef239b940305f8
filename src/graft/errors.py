"""The one exception graft raises for bad input: a one-line message naming the file and the fix."""
from __future__ import annotations

from typing import Optional


class GraftError(Exception):
    """User-facing error. The CLI prints ``str(error)`` on one line and exits with status 2.

    ``key``: the recipe key at fault, when there is one, so the CLI can name its flag too.
    """

    def __init__(self, message: str, key: Optional[str] = None) -> None:
        super().__init__(_from_loader_worker(message))
        self.key = key


def _from_loader_worker(message: str) -> str:
    """The one line of a GraftError raised in a DataLoader worker process (e.g. an image named to `graft predict` that
    cannot be decoded): torch re-raises it in the main process as ``GraftError("Caught GraftError in DataLoader worker
    process N. Original Traceback ...")``, whose last line ends with the original message."""
    if message.startswith("Caught GraftError in DataLoader worker"):
        marker = "GraftError: "
        last = message.rstrip().splitlines()[-1]
        return last[last.index(marker) + len(marker):] if marker in last else last
    return message
