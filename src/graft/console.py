"""Rich progress and messages on stderr; ``quiet`` silences everything but errors, ``progress=False`` only the bars."""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Reporter:
    """What graft shows while it works. One per command; pass ``quiet=True`` for scripts, ``progress=False`` to keep
    the messages without progress bars (a notebook cell, a log file)."""

    def __init__(self, quiet: bool = False, enabled: bool = True, progress: bool = True) -> None:
        self.quiet = quiet or not enabled
        self.progress = progress
        self.console = Console(stderr=True, quiet=self.quiet)

    def print(self, *objects: Any, **kwargs: Any) -> None:
        self.console.print(*objects, **kwargs)

    def track(self, iterable: Iterable[Any], total: Optional[int], description: str) -> Iterator[Any]:
        """Iterate with a progress bar (nothing drawn when quiet, without progress or not a terminal)."""
        if self.quiet or not self.progress or not self.console.is_terminal:
            yield from iterable
            return
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                   TextColumn("{task.fields[status]}"))
        with Progress(*columns, console=self.console, transient=True) as progress:
            task = progress.add_task(description, total=total, status="")
            for item in iterable:
                yield item
                progress.advance(task)
                if isinstance(item, dict) and "status" in item:
                    progress.update(task, status=item["status"])
