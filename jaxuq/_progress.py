"""One progress bar for long work (rich): training, detector fitting, downloads.

Only process 0 draws (``jax.process_index() == 0``), so a multi-process run shows one bar, and
``quiet=True`` draws nothing. Bars go to stderr and are transient: once finished they disappear.

    for batch in track(batches, "KNN: fit", total=num_batches, quiet=quiet):
        ...
    with progress_bar("cifar-10-python.tar.gz", total=size_in_bytes, unit="bytes") as advance:
        advance(len(block))
    with progress_bar("fit", total=steps, completed=done, columns=("loss {task.fields[loss]:.4f}",),
                      loss=float("nan")) as advance:
        advance(100, description="fit epoch 2/10", loss=0.53)   # extra fields and a new description
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
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


def _columns(unit: str, extra: Sequence[str]):
    counts = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(),)
    return (TextColumn("{task.description}"), BarColumn(), *counts, *map(TextColumn, extra),
            TimeElapsedColumn(), TimeRemainingColumn())


@contextmanager
def progress_bar(description: str, total: float | None = None, *, quiet: bool = False,
                 unit: str = "steps", completed: float = 0, columns: Sequence[str] = (),
                 **fields) -> Iterator[Callable[..., None]]:
    """Context manager yielding ``advance(n=1, **update)``: moves the bar ``n`` units forward and
    sets ``description=`` or any of ``fields`` given in ``update``.

    Args:
      description: text left of the bar.
      total: number of units (``None``: unknown, the bar pulses).
      quiet: draw nothing (``advance`` is then a no-op), as on processes other than 0.
      unit: ``"steps"`` (shows ``done/total``) or ``"bytes"`` (shows size and speed).
      completed: units already done (a resumed run).
      columns: extra rich ``TextColumn`` templates, e.g. ``"loss {task.fields[loss]:.4f}"``.
      **fields: the initial values of the fields those templates read.
    """
    if not enabled(quiet):
        yield lambda n=1, **update: None
        return
    with Progress(*_columns(unit, columns), console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total, completed=completed, **fields)
        yield lambda n=1, **update: progress.update(task, advance=n, **update)


def track(iterable: Iterable[T], description: str, *, total: int | None = None,
          quiet: bool = False) -> Iterator[T]:
    """Iterate over ``iterable`` with a bar of ``total`` steps (default ``len(iterable)``)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with progress_bar(description, total, quiet=quiet) as advance:
        for item in iterable:
            yield item
            advance(1)
