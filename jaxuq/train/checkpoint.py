"""orbax checkpoints of a TrainState: save every N steps / at epoch ends, restore the latest.

What is saved: ``step``, ``params``, ``batch_stats``, ``opt_state``, ``extras`` and ``constants`` (each
when not empty) and
the raw data of the run key (typed keys are stored with ``jax.random.key_data`` and re-wrapped on
restore), plus a JSON dict of
metadata (epoch, position in the epoch, config). Data order needs nothing more: the order of epoch
``e`` is ``permutation(fold_in(data_key, e))`` and the step's key is ``fold_in(key, step)``.
orbax writes into a temporary folder and renames it when complete, so a process killed during a
save leaves the previous checkpoint as the latest valid one; a checkpoint damaged afterwards (a
truncated file) is skipped on restore with a warning, and the newest intact one is used.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["Checkpointer", "check_writable"]


def check_writable(directory: str | os.PathLike, what: str = "checkpoint directory") -> Path:
    """Create ``directory`` if needed and prove it is writable; raise PermissionError naming it (as
    ``what``)."""
    path = Path(directory).expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PermissionError(f"{what} {path} is not writable: {e.strerror or e}") from e
    return path


def _to_saveable(state) -> dict:
    out = {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
        "key": jax.random.key_data(state.key),
    }
    if state.extras:  # absent when empty: checkpoints without extras stay readable
        out["extras"] = state.extras
    if state.constants:  # likewise (Masksembles masks)
        out["constants"] = state.constants
    return out


def _leaf_sig(a) -> tuple:
    return tuple(a.shape), np.dtype(a.dtype)


def _path(keys) -> str:
    """``opt_state/1/0/trace/conv1/kernel``: the same for a NamedTuple field and the dict orbax stores."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in keys)


def _check_like(template, restored, where: str) -> None:
    """Raise ValueError naming every leaf whose path, shape or dtype differs from the template
    (leaves: arrays, ``jax.ShapeDtypeStruct`` or orbax ``ArrayMetadata``)."""
    t_flat = {_path(k): v for k, v in jax.tree_util.tree_flatten_with_path(template)[0]}
    r_flat = {_path(k): v for k, v in jax.tree_util.tree_flatten_with_path(restored)[0]}
    problems = [f"missing {k}" for k in t_flat if k not in r_flat]
    problems += [f"unexpected {k}" for k in r_flat if k not in t_flat]
    for k in t_flat.keys() & r_flat.keys():
        (ts, td), (rs, rd) = _leaf_sig(t_flat[k]), _leaf_sig(r_flat[k])
        if ts != rs or td != rd:
            problems.append(f"{k}: expected {td}{list(ts)}, found {rd}{list(rs)}")
    if problems:
        raise ValueError(f"{where} does not match this model/optimizer: " + "; ".join(sorted(problems)[:10]))


def _abstract(tree):
    """Arrays -> ``jax.ShapeDtypeStruct`` with their shardings (orbax restores straight into them)."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


class Checkpointer:
    """Thin wrapper over ``orbax.checkpoint.CheckpointManager``.

    Saves are asynchronous where an accelerator is present (orbax copies the arrays to host before
    ``save`` returns, then writes in a thread) and synchronous on CPU, where there is nothing to overlap
    and a SIGKILL right after ``save`` must find the checkpoint on disk. ``close`` waits for the writes.
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2, async_save: bool | None = None):
        self.directory = check_writable(directory)
        self.async_save = jax.default_backend() != "cpu" if async_save is None else async_save
        self.manager = ocp.CheckpointManager(
            self.directory,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=self.async_save
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state, metadata: dict | None = None) -> None:
        """Save ``state`` under its step (the first member's for a stacked ensemble)."""
        step = int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])
        if step in self.manager.all_steps():  # a step skipped as corrupt on restore is written again
            self.manager.delete(step)
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(_to_saveable(state)), meta=ocp.args.JsonSave(metadata or {})
                ),
                force=True,
            )
            if not self.async_save:
                self.manager.wait_until_finished()
        except BaseException as e:  # a failed or interrupted save leaves no half-written step folder
            self.clean_tmp()
            if _disk_full(e):  # tensorstore reports ENOSPC as a ValueError
                raise OSError(errno.ENOSPC, f"no space left on device: checkpoint {step} under "
                              f"{self.directory} was not written (the earlier ones are intact); free space "
                              "and call fit again with the same workdir to resume") from None
            if isinstance(e, OSError):
                raise PermissionError(f"could not write checkpoint {step} under {self.directory}: {e}") from e
            raise

    def clean_tmp(self) -> list[str]:
        """Remove orbax's unfinished ``*.orbax-checkpoint-tmp*`` step folders (never a finished step); returns
        their names. Links are unlinked, not followed."""
        gone = []
        for p in sorted(self.directory.glob("*.orbax-checkpoint-tmp*")):
            if p.is_symlink() or not p.is_dir():
                p.unlink(missing_ok=True)
            else:
                shutil.rmtree(p, ignore_errors=True)
            gone.append(p.name)
        return gone

    def _restore_step(self, step: int, target):
        where = f"checkpoint {step} under {self.directory}"
        try:
            md = self.manager.item_metadata(step)["state"]
            stored = getattr(md, "tree", md)
        except Exception as e:  # noqa: BLE001 - unreadable metadata: a corrupt step
            raise _Corrupt(f"{where}: unreadable metadata ({type(e).__name__}: {str(e)[:200]})") from e
        if stored is None:
            raise _Corrupt(f"{where}: no state metadata")
        _check_like(target, stored, where)  # a different model: a clear error, no fallback
        try:
            out = self.manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()),
            )
        except Exception as e:  # noqa: BLE001 - metadata fine but data unreadable: corrupt
            raise _Corrupt(f"{where}: unreadable data ({type(e).__name__}: {str(e)[:200]})") from e
        _check_like(target, out["state"], where)
        return out

    def restore(self, state, step: int | None = None):
        """Restore into the structure and shardings of ``state`` (a freshly created TrainState).

        Returns ``(state, metadata)``; ``(state, None)`` when there is no checkpoint. Without ``step``
        the newest intact checkpoint is used: a corrupt newer one is skipped with a warning naming it.
        """
        steps = sorted(self.manager.all_steps(), reverse=True) if step is None else [step]
        target = _abstract(_to_saveable(state))
        for i, s in enumerate(steps):
            try:
                out = self._restore_step(s, target)
            except _Corrupt as e:
                if i + 1 == len(steps):
                    raise ValueError(f"{e}; no intact checkpoint left under {self.directory}") from e
                warnings.warn(f"{e}; resuming from the previous step {steps[i + 1]} instead", stacklevel=2)
                continue
            r = out["state"]
            restored = state.replace(
                step=r["step"],
                params=r["params"],
                batch_stats=r["batch_stats"],
                opt_state=r["opt_state"],
                key=jax.random.wrap_key_data(r["key"], impl=jax.random.key_impl(state.key)),
                extras=r.get("extras", state.extras),
                constants=r.get("constants", state.constants),
            )
            return restored, dict(out["meta"] or {})
        return state, None

    def finish(self) -> None:
        """Wait for orbax's writer, then remove unfinished step folders (a save cut short by Ctrl-C)."""
        try:
            self.manager.wait_until_finished()
        finally:
            self.clean_tmp()

    def close(self):
        """:meth:`finish`, then close the manager."""
        self.finish()
        self.manager.close()


def _disk_full(e: BaseException) -> bool:
    return (isinstance(e, OSError) and e.errno == errno.ENOSPC) or (
        isinstance(e, ValueError) and ("No space left on device" in str(e) or "RESOURCE_EXHAUSTED" in str(e)))


class _Corrupt(Exception):
    pass
