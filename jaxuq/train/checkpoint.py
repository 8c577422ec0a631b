"""orbax checkpoints of a TrainState: save every N steps / at epoch ends, restore the latest.

What is saved: ``step``, ``params``, ``batch_stats``, ``opt_state`` and the raw data of the run key
(typed keys are stored with ``jax.random.key_data`` and re-wrapped on restore), plus a JSON dict of
metadata (epoch, position in the epoch, config). Data order needs nothing more: the order of epoch
``e`` is ``permutation(fold_in(data_key, e))`` and the step's key is ``fold_in(key, step)``.
orbax writes into a temporary folder and renames it when complete, so a process killed during a
save leaves the previous checkpoint as the latest valid one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["Checkpointer", "check_writable"]


def check_writable(directory: str | os.PathLike) -> Path:
    """Create ``directory`` if needed and prove it is writable; raise PermissionError naming it."""
    path = Path(directory).expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PermissionError(f"checkpoint directory {path} is not writable: {e.strerror or e}") from e
    return path


def _to_saveable(state) -> dict:
    return {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
        "key": jax.random.key_data(state.key),
    }


def _check_like(template, restored, where: str) -> None:
    """Raise ValueError naming every leaf whose path, shape or dtype differs from the template."""
    t_flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(template)[0]}
    r_flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(restored)[0]}
    problems = [f"missing {k}" for k in t_flat if k not in r_flat]
    problems += [f"unexpected {k}" for k in r_flat if k not in t_flat]
    for k in t_flat.keys() & r_flat.keys():
        a, b = t_flat[k], r_flat[k]
        if np.shape(a) != np.shape(b) or np.asarray(a).dtype != np.asarray(b).dtype:
            problems.append(
                f"{k}: expected {np.asarray(a).dtype}{list(np.shape(a))}, "
                f"found {np.asarray(b).dtype}{list(np.shape(b))}"
            )
    if problems:
        raise ValueError(f"{where} does not match this model/optimizer: " + "; ".join(sorted(problems)[:10]))


class Checkpointer:
    """Thin wrapper over ``orbax.checkpoint.CheckpointManager`` (synchronous saves)."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        self.directory = check_writable(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state, metadata: dict | None = None, force: bool = True) -> None:
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(_to_saveable(state)), meta=ocp.args.JsonSave(metadata or {})
                ),
                force=force,
            )
            self.manager.wait_until_finished()
        except OSError as e:
            raise PermissionError(f"could not write checkpoint {step} under {self.directory}: {e}") from e

    def restore(self, state, step: int | None = None):
        """Restore into the structure of ``state`` (a freshly created TrainState). Returns
        ``(state, metadata)``; ``(state, None)`` when there is no checkpoint."""
        step = self.latest_step() if step is None else step
        if step is None:
            return state, None
        target = jax.tree.map(
            lambda a: np.zeros(a.shape, a.dtype) if hasattr(a, "shape") else a, _to_saveable(state)
        )
        try:
            out = self.manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()),
            )
        except Exception as e:
            raise ValueError(
                f"checkpoint {step} under {self.directory} does not match this model/optimizer: {e}"
            ) from e
        s = out["state"]
        _check_like(target, s, f"checkpoint {step} under {self.directory}")
        key_impl = jax.random.key_impl(state.key)
        restored = state.replace(
            step=jax.numpy.asarray(s["step"]),
            params=s["params"],
            batch_stats=s["batch_stats"],
            opt_state=s["opt_state"],
            key=jax.random.wrap_key_data(s["key"], impl=key_impl),
        )
        return restored, dict(out["meta"] or {})

    def close(self):
        self.manager.close()
