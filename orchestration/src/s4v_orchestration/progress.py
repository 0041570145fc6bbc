"""Terminal progress for a run: an epochs bar, a bar per phase (train, validate, test) with ETA.

Bars need a terminal. When the output is a file or a pipe (``nohup``, a batch scheduler), the
run prints plain lines instead: its description, then one line per epoch (:meth:`epoch_line`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

log = logging.getLogger(__name__)


class RunProgress:
    """Progress of a run on rank 0 (``enabled``): rich bars in a terminal, plain lines elsewhere.

    With ``enabled`` False (other ranks, library use) notes become log records and nothing prints.
    """

    def __init__(self, *, enabled: bool, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.bars = enabled and self.console.is_terminal
        self._progress = Progress(
            TextColumn("[bold]{task.description:<14}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("elapsed"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            disable=not self.bars,
            transient=False,
        )
        self._epochs: TaskID | None = None

    def __enter__(self) -> RunProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def note(self, message: str) -> None:
        """A line above the bars, or a plain line (a log record when not ``enabled``)."""
        if self.enabled:
            self._progress.console.print(message, highlight=False)
        else:
            log.info(message)

    def epoch_line(self, line: str) -> None:
        """One finished epoch in plain text, printed when there are no bars to show it."""
        if self.enabled and not self.bars:
            self.console.print(line, highlight=False, markup=False, soft_wrap=True)

    def start_epochs(self, total: int, completed: int) -> None:
        self._epochs = self._progress.add_task("epochs", total=total, completed=completed, info="")

    def end_epoch(self, info: str) -> None:
        if self._epochs is not None:
            self._progress.update(self._epochs, advance=1, info=info)

    def track(self, items: Iterable[Any], total: int, description: str) -> Iterator[Any]:
        """Yield ``items`` while a bar counts them; the bar disappears when done."""
        task = self._progress.add_task(description, total=total, info="")
        try:
            for item in items:
                yield item
                self._progress.advance(task)
        finally:
            self._progress.remove_task(task)

    def set_info(self, description: str, info: str) -> None:
        """Update the text after the bar of the running phase called ``description``."""
        for task in self._progress.tasks:
            if task.description == description and not task.finished:
                self._progress.update(task.id, info=info)
