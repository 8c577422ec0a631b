"""Callbacks of ``fit``: per-epoch outputs (the JSONL log, a metric writer) and the hooks that weight
averaging (SWA, EMA, SWAG, checkpoint ensembles) build on.

A callback overrides any of:

- ``on_fit_start(state) -> state``: on the host, once, on the freshly created state (stacked
  ``[M, ...]`` for an ensemble) *before* a checkpoint is restored into it: create ``state.extras``
  here (its structure must be the same on every run so that a resume finds it in the checkpoint).
- ``on_step(state) -> state``: *inside* the jitted step, after the update, on one model's state
  (an ensemble maps it over its members): pure per-step updates of ``state.extras`` (an EMA). A
  callback whose ``before_update`` is True gets the state the step starts from instead (before the
  forward pass and the optimizer update: TU's EMA, ``jaxuq.train.averaging.WeightAveraging``). The
  callback is part of the compiled program: it must be hashable (a plain object, hashed by
  identity, or a frozen dataclass); reuse the same object across ``fit`` calls to reuse the
  compilation.
- ``on_epoch_end(state, record) -> state``: on the host after each epoch (``record``: the epoch's
  dict, which a callback may extend), *before* the epoch-end checkpoint, so what it puts in
  ``state.extras`` (SWA/SWAG snapshots) is saved and resumed with the rest.
- ``on_checkpoint(step) -> None``: after each checkpoint is written.

Every hook runs on every process (a multi-host run must keep its states equal); the writers below
write on process 0 only.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import jax

from jaxuq.train.checkpoint import check_writable

__all__ = ["Callback", "JsonlLogger", "MetricWriterCallback"]


class Callback:
    """Base class with no-op hooks (module doc); subclass and override what you need."""

    before_update = False  # True: on_step runs before the step's update (module doc)

    def on_fit_start(self, state):
        return state

    def on_step(self, state):
        return state

    def on_epoch_end(self, state, record: dict):
        return state

    def on_checkpoint(self, step: int) -> None:
        pass


def overrides(callback, hook: str) -> bool:
    """True when ``callback`` has its own ``hook`` (not the base class no-op)."""
    own = getattr(type(callback), hook, None)
    return own is not None and own is not getattr(Callback, hook)


class JsonlLogger(Callback):
    """One JSON line per epoch record in ``path`` (process 0; ``fit(workdir=...)`` adds one for
    ``workdir/metrics.jsonl``). The last record of an epoch wins: writing epoch ``e`` first drops the
    lines of epochs ``>= e`` (a run that died after logging an epoch but before its checkpoint runs it
    again on resume; a fresh run replaces a stale log), so the log always matches the run's history."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        check_writable(self.path.parent, "log directory")
        if os.path.lexists(self.path) and not stat.S_ISREG(os.lstat(self.path).st_mode):
            raise ValueError(f"log file {self.path} exists and is not a regular file (a directory or a "
                             "link); remove it or log elsewhere")

    def on_epoch_end(self, state, record: dict):
        if jax.process_index() != 0:
            return state
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        keep = [ln for ln in lines if ln.strip() and json.loads(ln).get("epoch", 0) < record["epoch"]]
        if len(keep) < len(lines):  # rewrite without the replaced epochs, atomically
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(ln + "\n" for ln in keep))
            os.replace(tmp, self.path)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        return state


class MetricWriterCallback(Callback):
    """Each epoch record's numeric scalars to ``writer.write_scalars(step, scalars)`` (a clu
    ``MetricWriter`` or anything with that method), on process 0."""

    def __init__(self, writer):
        if not callable(getattr(writer, "write_scalars", None)):
            raise TypeError(f"writer must have write_scalars(step, scalars), got {type(writer).__name__}")
        self.writer = writer

    def on_epoch_end(self, state, record: dict):
        if jax.process_index() == 0:
            scalars = {k: v for k, v in record.items() if k not in ("epoch", "step")
                       and isinstance(v, int | float) and not isinstance(v, bool)}
            self.writer.write_scalars(record["step"], scalars)
        return state
