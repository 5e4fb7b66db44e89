"""Run logs and progress: one way to copy a job's log lines to a file, one way to show how far a job has got.

Library code logs to loggers under `mice.` and never configures anyone else's: `run_log` attaches its file
handler to a logger of ours for the length of a `with` block and takes it off again, and `progress` draws a rich
bar on a terminal and, when asked, writes the same progress as log lines, so a log file shows it too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def run_log(
    path: str | os.PathLike | None, logger: str = "mice", fmt: str = FORMAT, datefmt: str | None = None
) -> Iterator[logging.Logger]:
    """Copy the INFO and higher records of `logger` (one of ours: `mice` or below) to `path` inside the block.

    The logger's level is lowered to INFO only if it would drop INFO records, and restored afterwards; no
    handler is left behind. With `path` None the block runs unlogged."""
    if not (logger == "mice" or logger.startswith("mice.")):
        raise ValueError(f"run_log configures loggers of ours only (mice or mice.*), not {logger!r}")
    log = logging.getLogger(logger)
    if path is None:
        yield log
        return
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(fmt, datefmt))
    handler.setLevel(logging.INFO)
    level = log.level
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        yield log
    finally:
        log.removeHandler(handler)
        handler.close()
        log.setLevel(level)


class Progress:
    """How far a job has got: a rich bar (when `bar`), and log lines on `logger` (when given) with the time left.

    Use as a context manager, or call `stop()`; `advance(n)` after each unit of work, `info(text)` to show a
    line of status beside the bar."""

    def __init__(
        self, total: int | None, label: str, *, bar: bool = True, logger: str | None = None, done: int = 0, console=None
    ):
        self.total, self.label, self.done, self.start_done = total, label, done, done
        self.t0 = time.perf_counter()
        self.log = logging.getLogger(logger) if logger else None
        self._bar = None
        if bar:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn(label),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
            )
            self._bar.start()
            self._task = self._bar.add_task(label, total=total, completed=done, info="")

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.advance(self._task, n)
        if self.log is not None:
            elapsed = time.perf_counter() - self.t0
            fresh = self.done - self.start_done
            left = elapsed / fresh * (self.total - self.done) if fresh and self.total else float("nan")
            self.log.info(
                "%s: %d/%s done, %.0f s elapsed, about %.0f s left",
                self.label,
                self.done,
                self.total if self.total is not None else "?",
                elapsed,
                left,
            )

    def info(self, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, info=text)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def progress(
    total: int | None, label: str, enabled: bool = True, logger: str | None = None, done: int = 0, console=None
) -> Progress:
    """A `Progress` that draws, and logs to `logger` when one is named, only when `enabled` (off on ranks other
    than the main one, and in quiet runs)."""
    return Progress(total, label, bar=enabled, logger=logger if enabled else None, done=done, console=console)


def track(items: Iterable[T], label: str, enabled: bool = True, total: int | None = None) -> Iterator[T]:
    """`items`, advancing a bar after each one when `enabled`."""
    if not enabled:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, label) as bar:
        for item in items:
            yield item
            bar.advance()
