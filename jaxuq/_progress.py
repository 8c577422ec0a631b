"""One progress bar for long work (rich): training, detector fitting, downloads.

Only process 0 draws (``jax.process_index() == 0``), so a multi-process run shows one bar, and
``quiet=True`` draws nothing. Bars go to stderr and are transient: once finished they disappear.

    for batch in track(batches, "KNN: fit", total=num_batches, quiet=quiet):
        ...
    with progress_bar("cifar-10-python.tar.gz", total=size_in_bytes, unit="bytes") as advance:
        advance(len(block))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import jax
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

__all__ = ["enabled", "progress_bar", "track"]

T = TypeVar("T")


def enabled(quiet: bool = False) -> bool:
    """True when this process draws bars: not ``quiet`` and ``jax.process_index() == 0``."""
    return not quiet and jax.process_index() == 0


def _columns(unit: str):
    counts = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(),)
    return (TextColumn("{task.description}"), BarColumn(), *counts, TimeElapsedColumn(),
            TimeRemainingColumn())


@contextmanager
def progress_bar(description: str, total: float | None = None, *, quiet: bool = False,
                 unit: str = "steps") -> Iterator[Callable[[float], None]]:
    """Context manager yielding ``advance(n)``, which moves the bar ``n`` units forward.

    Args:
      description: text left of the bar.
      total: number of units (``None``: unknown, the bar pulses).
      quiet: draw nothing (``advance`` is then a no-op), as on processes other than 0.
      unit: ``"steps"`` (shows ``done/total``) or ``"bytes"`` (shows size and speed).
    """
    if not enabled(quiet):
        yield lambda n=1: None
        return
    with Progress(*_columns(unit), console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def track(iterable: Iterable[T], description: str, *, total: int | None = None,
          quiet: bool = False) -> Iterator[T]:
    """Iterate over ``iterable`` with a bar of ``total`` steps (default ``len(iterable)``)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with progress_bar(description, total, quiet=quiet) as advance:
        for item in iterable:
            yield item
            advance(1)
