"""Progress and time left for long work, shown only to a person at a terminal.

Job: a replay of millions of log entries at start, a projector catching up, an audit, thousands
of simulator seeds, a chaos run or a benchmark's set-up can take minutes; a person watching wants
to know how far it is and how long is left. Logs, CI and pipes want none of it: the bar is drawn
on stderr only when stderr is a terminal (and ``COFFER_PROGRESS`` is not ``0``), else nothing is
drawn and rich is not even imported.

Method: :func:`progress` returns a context manager with ``advance(n)`` and ``update(done)``; the
no-op one costs a method call. rich draws the bar, the count, the rate and the time left.
"""

import os
import sys
import time
from collections.abc import Iterable, Iterator, Sized
from types import TracebackType
from typing import IO, Any, TypeVar

T = TypeVar("T")

progress_variable = "COFFER_PROGRESS"  # "0": never draw (a terminal recorded by a script)
refresh_per_s = 4


class Progress:
    """Counts work done; draws nothing (see :func:`progress` for the one that draws)."""

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        return None

    def advance(self, amount: float = 1) -> None:
        return None

    def update(self, done: float, total: float | None = None) -> None:
        return None


class _TerminalProgress(Progress):
    def __init__(self, description: str, total: float | None, stream: IO[str], unit: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns: list[Any] = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit)]
        columns += [TaskProgressColumn(), TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn()]
        self._bar = Progress(*columns, console=Console(file=stream), transient=True, refresh_per_second=refresh_per_s)
        self._task = self._bar.add_task(description, total=total)

    def __enter__(self) -> "Progress":
        self._bar.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._bar.stop()

    def advance(self, amount: float = 1) -> None:
        self._bar.advance(self._task, amount)

    def update(self, done: float, total: float | None = None) -> None:
        if total is not None:
            self._bar.update(self._task, completed=done, total=total)
        else:
            self._bar.update(self._task, completed=done)


def shows_progress(stream: IO[str] | None = None) -> bool:
    stream = sys.stderr if stream is None else stream
    if os.environ.get(progress_variable) == "0":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def progress(description: str, total: float | None, *, unit: str = "", stream: IO[str] | None = None) -> Progress:
    """A bar for ``total`` steps of work on stderr if it is a terminal, else one that draws nothing."""
    stream = sys.stderr if stream is None else stream
    if not shows_progress(stream):
        return Progress()
    return _TerminalProgress(description, total, stream, unit)


def progress_over(items: Iterable[T], description: str, *, unit: str = "", shown: bool = True) -> Iterator[T]:
    """Each of ``items``, with a bar that advances by one per item (when ``shown`` and on a terminal)."""
    total = len(items) if isinstance(items, Sized) else None
    with progress(description, total, unit=unit) if shown else Progress() as bar:
        for item in items:
            yield item
            bar.advance()


def progress_until(deadline: float, description: str) -> Iterator[None]:
    """Rounds of work until ``deadline`` (time.monotonic), with a bar of the seconds gone and left."""
    begin = time.monotonic()
    with progress(description, max(0.0, deadline - begin), unit="s") as bar:
        while time.monotonic() < deadline:
            yield None
            bar.update(min(time.monotonic(), deadline) - begin)
