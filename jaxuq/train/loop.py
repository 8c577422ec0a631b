"""The one training engine: ``fit(model, data, config)`` for a single model, a stacked deep ensemble
(``TrainConfig(ensemble=EnsembleConfig(num_members=M))``) or a model with its members in the batch
(a Packed-Ensemble with ``format_batch=RepeatTarget(M)``).

Data on device: the training set is put on the device once; each epoch's order is
``permutation(fold_in(data_key, epoch), N)`` (ensembles without ``shared_order``: one order per
member, from ``split(data_key, M)[m]``); the jitted ``train_chunk`` runs a ``lax.scan`` of
``steps_per_call`` (or ``checkpoint_every``) steps, gathering, augmenting and training inside one XLA
program, with the state donated. The last partial batch of an epoch is kept (TU's DataLoaders do not
drop it) and runs as a chunk of one step with its own shape.

Streaming (``on_device=False``): the same chunks are gathered on the host and prefetched to the
device by a thread (``prefetch_to_device``) while the previous chunk computes.

Ensembles: the state is M single-model states stacked on axis 0; ``train_step`` is mapped over the
members with the chosen lowering (``vmap`` / ``map`` / ``unroll``); a member mesh places the members
on devices (``shard_map``), a data mesh shards the batch (``jaxuq.sharding.split_mesh``, once here).

Checkpoints (orbax, ``workdir/checkpoints``) are written at chunk ends that fall on multiples of
``checkpoint_every`` steps within the epoch and at every epoch end, after the callbacks'
``on_epoch_end`` (so what they keep in ``state.extras`` is saved). A run restarts from the latest
intact checkpoint with the same chunk boundaries, so on CPU it ends bitwise equal to an
uninterrupted run. Only process 0 draws the progress bar and writes the log (``workdir/metrics.jsonl``).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import os
import time
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jaxuq import _validate
from jaxuq import metrics as M
from jaxuq._progress import progress_bar
from jaxuq.data.pipeline import epoch_permutation, prefetch_to_device
from jaxuq.ensembles import default_lowering, over_members
from jaxuq.evaluation import predict
from jaxuq.forward import members_in_batch
from jaxuq.losses import cross_entropy
from jaxuq.nn.conv import XLA_CPU_OPTIONS
from jaxuq.sharding import (
    MEMBER_AXIS,
    MeshRoles,
    global_batch,
    is_multiprocess,
    process_batch_slice,
    replicate,
    split_mesh,
    to_host,
)
from jaxuq.train.callbacks import Callback, JsonlLogger, overrides
from jaxuq.train.checkpoint import Checkpointer
from jaxuq.train.config import TrainConfig, resolve_compute_dtype
from jaxuq.train.objective import LossObjective
from jaxuq.train.optim import recipe
from jaxuq.train.state import StepSettings, TrainState, create_train_state, prepare_batch, train_step

__all__ = ["FitResult", "fit", "train_chunk"]


@dataclasses.dataclass
class FitResult:
    state: TrainState
    history: list[dict]
    resumed_from: int | None = None


# ----------------------------------------------------------------------------- the jitted chunk


@dataclasses.dataclass(frozen=True)
class _Members:
    """How the member axis of a stacked ensemble is run (static)."""

    lowering: str
    per_member_inputs: bool
    mesh: Any = None  # member mesh
    shared_augmentation: bool = False  # one augmented/formatted batch for every member (member 0's key)


def _step_fn(settings: StepSettings, members: _Members | None):
    one = partial(train_step, settings=settings)
    if members is None:
        return one
    if members.per_member_inputs:
        return lambda state, x, y: over_members(one, members.lowering, state, x, y, mesh=members.mesh)
    if not members.shared_augmentation:
        return lambda state, x, y: over_members(one, members.lowering, state, shared=(x, y),
                                                mesh=members.mesh)
    raw = partial(train_step, settings=dataclasses.replace(settings, preprocess=None, format_batch=None))

    def shared(state, x, y):
        x, y = prepare_batch(settings, state.key[0], state.step[0], x, y)
        return over_members(raw, members.lowering, state, shared=(x, y), mesh=members.mesh)

    return shared


@partial(jax.jit, static_argnames=("settings", "members"), donate_argnums=0,
         compiler_options=XLA_CPU_OPTIONS)
def train_chunk(state, images, labels, idx, settings: StepSettings, members: _Members | None = None):
    """``lax.scan`` of ``train_step`` over a chunk of S steps.

    With ``idx`` ``[S, B]`` (``[S, M, B]``: per-member orders), ``images``/``labels`` are the whole set
    on device and the batches are gathered here; with ``idx=None`` they are the chunk's batches
    ``[S, B, ...]`` (``[S, M, B, ...]``). Returns ``(state, metrics [S] or [S, M])``.
    """
    if idx is not None:
        images, labels = images[idx], labels[idx]
    step = _step_fn(settings, members)
    return jax.lax.scan(lambda s, b: step(s, *b), state, (images, labels))


# ----------------------------------------------------------------------------- setup


def _make_tx(optimizer, steps_per_epoch: int) -> optax.GradientTransformation:
    if isinstance(optimizer, str):
        return recipe(optimizer, steps_per_epoch)
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    if callable(optimizer):
        return optimizer(steps_per_epoch)
    raise TypeError(
        f"optimizer must be a recipe name, an optax transformation or f(steps_per_epoch); got {optimizer!r}"
    )


def _sample(x: np.ndarray, preprocess) -> jax.Array:
    """Zeros shaped like one preprocessed input (the init sample)."""
    one = jax.ShapeDtypeStruct((1,) + x.shape[1:], x.dtype)
    out = one if preprocess is None else jax.eval_shape(preprocess.eval, one)
    return jnp.zeros(out.shape, out.dtype)


def _num_classes(model, sample) -> int:
    """The model's output width on ``sample``'s shape (one ``eval_shape`` trace of ``init``, ~50 ms for a
    LeNet: cached per model and input shape, as Flax modules hash by their fields)."""
    key = (tuple(sample.shape), np.dtype(sample.dtype).str)
    try:
        return _output_width(model, *key)
    except TypeError:  # a module with an unhashable field
        return _output_width.__wrapped__(model, *key)


@functools.lru_cache(maxsize=32)
def _output_width(model, shape: tuple[int, ...], dtype: str) -> int:
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(0)}
    sample = jax.ShapeDtypeStruct(shape, np.dtype(dtype))
    out = jax.eval_shape(lambda x: model.init_with_output(rngs, x, train=False)[0], sample)
    return int(out.shape[-1])


def _data(model, data, name: str, cfg: TrainConfig, num_classes: int | None = None):
    """``(inputs, targets, num_classes)`` checked (``_validate.fit_inputs`` / ``fit_targets``); the
    model's output width is the class count of integer targets (width 1: TU's binary routine, labels
    0/1)."""
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise TypeError(f"{name} data must be a tuple (inputs [N, ...], targets [N]), got "
                        f"{type(data).__name__}")
    x = _validate.fit_inputs(data[0], name, images=cfg.preprocess is not None)
    integer = np.issubdtype(np.asarray(data[1]).dtype, np.integer)
    if integer and num_classes is None:
        num_classes = _num_classes(model, _sample(x, cfg.preprocess))
    y = _validate.fit_targets(data[1], len(x), name, (max(num_classes, 2) if integer else None))
    if not integer and cfg.loss_fn is None and cfg.objective is None:
        raise ValueError(f"{name} labels must be integers (class indices) for the default cross-entropy "
                         f"loss, got dtype {y.dtype}; float (regression) targets need a loss_fn")
    return x, y, num_classes


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Batches of an epoch: ``n`` inputs, ``spe`` steps (last partial batch kept unless drop_last)."""

    n: int
    batch_size: int
    spe: int
    n_full: int
    rem: int
    chunk: int
    num_members: int | None
    member_shuffle: bool

    @classmethod
    def of(cls, n: int, cfg: TrainConfig) -> _Plan:
        if cfg.batch_size > n:
            raise ValueError(f"batch_size must be in [1, {n}] (training set size), got {cfg.batch_size}")
        n_full, rem = divmod(n, cfg.batch_size)
        ens = cfg.ensemble
        return cls(n=n, batch_size=cfg.batch_size, spe=n_full + (1 if rem and not cfg.drop_last else 0),
                   n_full=n_full, rem=rem, chunk=int(cfg.checkpoint_every or cfg.steps_per_call),
                   num_members=cfg.num_members, member_shuffle=ens is not None and not ens.shared_order)

    def order(self, k_data, epoch: int) -> np.ndarray:
        """``[n]`` or ``[M, n]`` (per-member shuffles)."""
        if not self.member_shuffle:
            return np.asarray(epoch_permutation(k_data, epoch, self.n))
        keys = jax.random.split(k_data, self.num_members)
        return np.stack([np.asarray(epoch_permutation(k, epoch, self.n)) for k in keys])

    def chunks(self, k_data, epoch: int, pos: int):
        """Yield ``(start, end, idx)`` from step ``pos`` of ``epoch``: ``idx [S, B]`` or ``[S, M, B]``."""
        perm = self.order(k_data, epoch)
        bs = self.batch_size
        while pos < self.spe:
            if pos < self.n_full:
                end = min(self.n_full, (pos // self.chunk + 1) * self.chunk)
                idx = perm[..., pos * bs : end * bs].reshape(perm.shape[:-1] + (end - pos, bs))
            else:
                end = self.spe
                idx = perm[..., self.n_full * bs :].reshape(perm.shape[:-1] + (1, self.rem))
            yield pos, end, np.moveaxis(idx, -2, 0)
            pos = end


def _check_mesh(roles: MeshRoles, cfg: TrainConfig, plan: _Plan) -> None:
    if roles.members is not None:
        ndev = roles.members.shape[MEMBER_AXIS]
        if cfg.ensemble is None:
            raise ValueError("a mesh with axis 'members' needs an ensemble (TrainConfig(ensemble=...))")
        if is_multiprocess():
            raise ValueError("member-parallel ensembles run in one process; use a 'data' mesh across hosts")
        if cfg.num_members % ndev:
            raise ValueError(f"num_members {cfg.num_members} is not divisible by the {ndev} devices of the "
                             "members mesh")
    mesh = roles.data
    if mesh is None:
        return
    if cfg.batch_size % mesh.size:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {mesh.size} devices of the "
                         "mesh")
    if is_multiprocess() and not cfg.on_device and plan.rem and not cfg.drop_last and plan.rem % mesh.size:
        raise ValueError(
            f"multi-process streaming: the last partial batch ({plan.rem} = {plan.n} inputs mod batch_size "
            f"{cfg.batch_size}) is not divisible by the {mesh.size} devices of the mesh; pass drop_last=True "
            "or on_device=True"
        )


def _fingerprint(cfg: TrainConfig, x: np.ndarray, y: np.ndarray, plan: _Plan) -> dict:
    """What a resume must not change besides the layout: the seed, the optimizer (its first two updates
    of a fixed probe, to 6 significant digits: the learning rate, momentum, weight decay and the start
    of the schedule, whatever form ``cfg.optimizer`` takes) and the training set (sha256 of its bytes)."""
    tx = _make_tx(cfg.optimizer, plan.spe)
    probe = {"w": jnp.linspace(0.5, 1.5, 3, dtype=jnp.float32)}
    try:
        opt, updates = tx.init(probe), []
        for g in (1.0, -0.5):
            u, opt = tx.update(jax.tree.map(lambda p, g=g: jnp.full_like(p, g), probe), opt, probe)
            updates += np.asarray(u["w"], np.float64).tolist()
        optimizer = ",".join(f"{v:.6g}" for v in updates)
    except Exception:  # noqa: BLE001 - a transformation tied to the model's own tree: not fingerprinted
        optimizer = None
    data = hashlib.sha256()
    for a in (x, y):
        data.update(f"{a.dtype.str}{a.shape}".encode())
        data.update(np.ascontiguousarray(a).data)
    return {"seed": cfg.seed, "optimizer": optimizer, "data": data.hexdigest()}


def _run_meta(plan: _Plan, fingerprint: dict) -> dict:
    """The checkpoint meta a resume is checked against (layout and fingerprint)."""
    return {"steps_per_epoch": plan.spe, "batch_size": plan.batch_size, "n_train": plan.n,
            "num_members": plan.num_members, **fingerprint}


_CHANGED = {"optimizer": "the optimizer (learning rate, momentum, weight decay or schedule) changed",
            "data": "the training set changed (same size, other contents)"}


def _check_resume(meta: dict, now: dict, where: str) -> None:
    """Refuse a resume whose epoch layout (batch size, dataset size, members), seed, optimizer or training
    set changed (checkpoints written before the fingerprint are checked for their layout only)."""
    skip = {"optimizer"} if None in (now.get("optimizer"), meta.get("optimizer")) else set()  # not probed
    diff = {k: (meta[k], v) for k, v in now.items() if k in meta and k not in skip and meta[k] != v}
    if diff:
        changes = ", ".join(_CHANGED.get(k, f"{k} {a} -> {b}") for k, (a, b) in diff.items())
        raise ValueError(
            f"cannot resume from {where}: {changes} since it was written (the run would silently mix "
            "two trainings). Resume with the original settings and data, or start a fresh run in "
            "another checkpoint directory."
        )


def _host_step(state) -> int:
    return int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])


def _restore(ckpt: Checkpointer | None, state, now: dict):
    """``(state, meta, resumed_from)``: the newest intact checkpoint's, or the state as given."""
    if ckpt is None:
        return state, None, None
    state, meta = ckpt.restore(state)
    if meta is None:
        return state, None, None
    _check_resume(meta, now, f"checkpoint {ckpt.latest_step()} under {ckpt.directory}")
    return state, meta, _host_step(state)


def _callbacks(callbacks: Sequence, workdir) -> tuple:
    """The callbacks as given, then a :class:`JsonlLogger` for ``workdir/metrics.jsonl`` (unless one
    is given); every ``on_step`` callback must be hashable (it is part of the compiled step)."""
    callbacks = tuple(callbacks)
    for cb in callbacks:
        if overrides(cb, "on_step"):
            try:
                hash(cb)
            except TypeError as e:
                raise TypeError(f"callback {cb!r} has on_step, so it is part of the compiled step and must "
                                "be hashable (a plain object or a frozen dataclass)") from e
    if workdir is not None and not any(isinstance(cb, JsonlLogger) for cb in callbacks):
        callbacks += (JsonlLogger(Path(workdir) / "metrics.jsonl"),)
    return callbacks


def _settings(cfg: TrainConfig, roles: MeshRoles, plan: _Plan, callbacks: tuple) -> StepSettings:
    ens = cfg.ensemble
    return StepSettings(
        preprocess=cfg.preprocess,
        objective=cfg.objective or LossObjective(cfg.loss_fn or cross_entropy),
        compute_dtype=resolve_compute_dtype(cfg.compute_dtype),
        format_batch=cfg.format_batch,
        grad_scale=1.0 / ens.num_members if ens is not None and ens.tu_gradient_scaling else 1.0,
        mesh=roles.data,
        steps_per_epoch=plan.spe,
        step_callbacks=tuple(cb for cb in callbacks if overrides(cb, "on_step")),
    )


def _members_of(cfg: TrainConfig, roles: MeshRoles) -> _Members | None:
    if cfg.ensemble is None:
        return None
    ens = cfg.ensemble
    return _Members(lowering=ens.lowering or default_lowering(), per_member_inputs=not ens.shared_order,
                    mesh=roles.members, shared_augmentation=ens.shared_augmentation)


# ----------------------------------------------------------------------------- data feed


def _local_chunk(mesh, images, labels, idx):
    """Chunk indices ``[S, B]`` / ``[S, M, B]`` -> global ``(images, labels)`` sharded on the batch
    axis, built from this process's columns of ``idx`` only."""
    axis = idx.ndim - 1
    sl = process_batch_slice(mesh, idx.shape[axis], axis=axis, ndim=idx.ndim)
    local = idx[(slice(None),) * axis + (sl,)]
    return global_batch(mesh, (images[local], labels[local]), idx.shape[axis], axis=axis)


def _prefetched(gen, sharding):
    """(start, end, host batch) -> (start, end, device batch), device_put up to two chunks ahead."""
    metas: collections.deque = collections.deque()

    def data_only():
        for p, e, b in gen:
            metas.append((p, e))
            yield b

    for b in prefetch_to_device(data_only(), size=2, sharding=sharding):
        p, e = metas.popleft()
        yield p, e, b


class _Feed:
    """The training set and how each chunk reaches ``train_chunk``: on device (the whole set, indices
    per chunk) or streamed (host-gathered batches, prefetched)."""

    def __init__(self, x, y, plan: _Plan, k_data, *, on_device: bool, roles: MeshRoles, per_member: bool):
        self.x, self.y, self.plan, self.k_data, self.on_device = x, y, plan, k_data, on_device
        self.mesh = roles.data or roles.members
        self.multi = roles.data is not None and is_multiprocess()
        self.put = (lambda a: replicate(a, self.mesh)) if self.mesh is not None else jax.device_put
        if on_device:  # the whole set on every device (each process holds its own copy)
            self.dev = (self.put(x), self.put(y))
        spec = PartitionSpec(*[None] * (2 if per_member else 1), "data") if roles.data else PartitionSpec()
        self.sharding = None if self.mesh is None else NamedSharding(self.mesh, spec)

    def chunks(self, epoch: int, pos: int):
        """``(start, end, (images, labels, idx))`` for ``train_chunk`` from step ``pos`` of ``epoch``."""
        it = self.plan.chunks(self.k_data, epoch, pos)
        if self.on_device:
            yield from ((p, e, (*self.dev, self.put(idx))) for p, e, idx in it)
            return
        if self.multi:  # each process gathers and sends only its rows of every batch
            it = ((p, e, _local_chunk(self.mesh, self.x, self.y, idx)) for p, e, idx in it)
        else:
            it = ((p, e, (self.x[idx], self.y[idx])) for p, e, idx in it)
        yield from ((p, e, (*b, None)) for p, e, b in _prefetched(it, self.sharding))


# ----------------------------------------------------------------------------- epoch records


def _new_acc(shape) -> dict:
    z = np.zeros(shape)
    return {"loss_sum": z, "count": z.copy(), "nonfinite": z.copy(), "seconds": 0.0}


def _acc_to_json(acc: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in acc.items()}


def _acc_from_json(d: dict) -> dict:
    return {k: (v if k in ("seconds", "steps") else np.asarray(v, np.float64)) for k, v in d.items()}


def _accumulate(acc: dict, m: dict, dt: float, record_steps: bool = False) -> None:
    """Add a chunk's metrics (``[S]`` or ``[S, M]``) to the epoch sums, counting finite steps only;
    ``record_steps``: keep every step's loss too (``acc["steps"]``)."""
    finite = np.asarray(m["finite"], bool)
    if record_steps:
        acc["steps"] = acc.get("steps", []) + np.asarray(m["loss"], np.float64).tolist()
    acc["loss_sum"] = acc["loss_sum"] + np.sum(np.where(finite, m["loss"] * m["count"], 0.0), axis=0)
    if "correct" in m:  # integer class targets and outputs from the objective
        acc["correct"] = acc.get("correct", 0.0) + np.sum(np.where(finite, m["correct"], 0), axis=0)
    acc["count"] = acc["count"] + np.sum(np.where(finite, m["count"], 0), axis=0)
    acc["nonfinite"] = acc["nonfinite"] + np.sum(~finite, axis=0)
    acc["seconds"] += dt


def _record(acc: dict, epoch: int, step: int, members: bool) -> dict:
    """The epoch's record; a member (or model) whose every step was skipped (``on_nonfinite="skip"``)
    has NaN loss and accuracy, not 0, and a ``RuntimeWarning`` says so."""
    seen = acc["count"] > 0
    count = np.maximum(acc["count"], 1)
    loss = np.where(seen, acc["loss_sum"] / count, np.nan)
    if not np.all(seen):
        warnings.warn(f"epoch {epoch + 1}: every step{' of some member' if members else ''} had a non-finite "
                      "loss and was skipped (on_nonfinite='skip'): train_loss is NaN, nothing was learned",
                      RuntimeWarning, stacklevel=2)
    record = {"epoch": epoch + 1, "step": step, "train_loss": float(np.mean(loss))}
    accuracy = np.where(seen, acc["correct"] / count, np.nan) if "correct" in acc else None
    if accuracy is not None:
        record["train_acc"] = float(np.mean(accuracy))
    record["seconds"] = acc["seconds"]
    record["images_per_s"] = float(np.sum(acc["count"])) / max(acc["seconds"], 1e-9)
    if members:
        record["train_loss_members"] = loss.tolist()
        if accuracy is not None:
            record["train_acc_members"] = accuracy.tolist()
    if np.any(acc["nonfinite"]):
        record["nonfinite_steps"] = int(np.max(acc["nonfinite"]))
    if "steps" in acc:
        record["train_loss_steps"] = acc["steps"]
    return record


def _validation(model, data, cfg: TrainConfig, roles: MeshRoles, lowering, state) -> dict:
    """``val_loss`` (classes: TU's NLL of the member-mean probabilities; float targets: ``loss_fn``,
    averaged over members) and ``val_acc`` (classes) of ``state`` on ``data``."""
    x, y = data
    out = predict(model, state.variables(), x, preprocess=cfg.preprocess, batch_size=cfg.eval_batch_size,
                  lowering=lowering, compute_dtype=resolve_compute_dtype(cfg.compute_dtype), mesh=roles)
    stacked = lowering is not None or members_in_batch(model)
    if np.issubdtype(y.dtype, np.integer) and np.shape(out)[-1] == 1:  # binary (TU: sigmoid, p > 0.5)
        p = jax.nn.sigmoid(jnp.asarray(out)[..., 0])
        p = jnp.mean(p, axis=0) if stacked else p
        return {"val_loss": float(M.nll(p, y)), "val_acc": float(jnp.mean((p > 0.5) == y))}
    if np.issubdtype(y.dtype, np.integer):
        probs = jax.nn.softmax(jnp.asarray(out), axis=-1)
        probs = jnp.mean(probs, axis=0) if stacked else probs
        return {"val_loss": float(M.nll(probs, y)), "val_acc": float(M.accuracy(probs, y))}
    if cfg.loss_fn is None:
        return {}
    num = jax.tree.leaves(out)[0].shape[0] if stacked else 1  # outputs may be a head's parameter dict
    members = [jax.tree.map(lambda a, m=m: a[m], out) for m in range(num)] if stacked else [out]
    return {"val_loss": float(np.mean([cfg.loss_fn(o, y) for o in members]))}


# ----------------------------------------------------------------------------- the run


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Run:
    """Everything a fit needs between chunks; built by ``fit``."""

    cfg: TrainConfig
    plan: _Plan
    settings: StepSettings
    members: _Members | None
    feed: _Feed
    validate: Callable | None  # state -> {"val_loss", ...}
    ckpt: Checkpointer | None
    callbacks: tuple
    run_meta: dict  # _run_meta: written with every checkpoint, checked on resume

    def train(self, state, meta: dict | None) -> tuple[Any, list[dict]]:
        plan, cfg = self.plan, self.cfg
        total, step = cfg.epochs * plan.spe, _host_step(state)
        acc = _acc_from_json(meta["epoch_acc"]) if meta and meta.get("epoch_acc") else None
        history: list[dict] = []
        desc = "train" if plan.num_members is None else f"train {plan.num_members} members"
        columns = ("loss {task.fields[loss]:.4f}", "{task.fields[ips]:,.0f} img/s")
        try:
            with progress_bar(desc, total, quiet=cfg.quiet, completed=step, columns=columns,
                              loss=float("nan"), ips=0.0) as advance:
                while step < total:
                    epoch, pos = divmod(step, plan.spe)
                    if pos == 0 or acc is None:
                        acc = _new_acc(() if plan.num_members is None else (plan.num_members,))
                    label = f"{desc} epoch {epoch + 1}/{cfg.epochs}"
                    state = self._epoch(state, epoch, pos, acc, advance, label)
                    step = (epoch + 1) * plan.spe
                    state, record = self._end_epoch(state, acc, epoch, step)
                    history.append(record)
                    acc = None
        except KeyboardInterrupt:  # a clean stop: the writer finished, no tmp folder, how to resume
            raise KeyboardInterrupt(self._interrupted(step)) from None
        finally:
            if self.ckpt is not None:
                self.ckpt.close()
        return state, history

    def _interrupted(self, step: int) -> str:
        if self.ckpt is None:
            return f"training interrupted near step {step}; no workdir, so nothing was saved"
        self.ckpt.finish()  # waits for orbax's writer and removes unfinished step folders
        last = self.ckpt.latest_step()
        return (f"training interrupted near step {step}; last checkpoint: step {last} under "
                f"{self.ckpt.directory}. Call fit again with the same workdir and settings to resume.")

    def _epoch(self, state, epoch: int, pos: int, acc: dict, advance, label: str):
        """Train the rest of ``epoch`` from step ``pos``, adding to ``acc``; mid-epoch checkpoints."""
        for start, end, args in self.feed.chunks(epoch, pos):
            t0 = time.perf_counter()
            state, m = train_chunk(state, *args, self.settings, self.members)
            m = to_host(m)
            self._check_finite(m, epoch, start)
            _accumulate(acc, m, time.perf_counter() - t0, self.cfg.record_steps)
            ips = float(np.max(acc["count"])) / max(acc["seconds"], 1e-9)  # images/s, epoch so far
            advance(len(m["loss"]), description=label, loss=float(np.mean(m["loss"][-1])), ips=ips)
            if end < self.plan.spe and self.ckpt is not None and end % self.plan.chunk == 0:
                self._save(state, {"epoch": epoch, "pos": end, "epoch_acc": _acc_to_json(acc)})
        return state

    def _end_epoch(self, state, acc: dict, epoch: int, step: int):
        """The epoch's record (+ validation), the callbacks' ``on_epoch_end``, then the checkpoint."""
        record = _record(acc, epoch, step, self.plan.num_members is not None)
        if self.validate is not None:
            record.update(self.validate(state))
        for cb in self.callbacks:
            state = cb.on_epoch_end(state, record) if hasattr(cb, "on_epoch_end") else state
            if not isinstance(state, TrainState):
                raise TypeError(f"{type(cb).__name__}.on_epoch_end must return the state, got "
                                f"{type(state).__name__}")
        if self.ckpt is not None:
            self._save(state, {"epoch": epoch, "pos": self.plan.spe, "record": record})
        return state, record

    def _check_finite(self, m: dict, epoch: int, start: int) -> None:
        bad = np.argwhere(~np.asarray(m["finite"], bool))
        if not bad.size or self.cfg.on_nonfinite == "skip":
            return
        s = int(bad[0][0])
        member = f", member {int(bad[0][1])}" if bad.shape[1] > 1 else ""
        last = self.ckpt.latest_step() if self.ckpt is not None else None
        raise FloatingPointError(
            f"non-finite loss or gradient at step {epoch * self.plan.spe + start + s} (epoch {epoch + 1}, "
            f"batch {start + s + 1}/{self.plan.spe}{member}): loss {np.asarray(m['loss'])[tuple(bad[0])]}. "
            f"The update was not applied; last checkpoint: step {last}. Lower the learning rate, or set "
            "on_nonfinite='skip' to drop such updates and go on."
        )

    def _save(self, state, meta: dict) -> None:
        meta.update(self.run_meta)
        self.ckpt.save(state, meta)
        for cb in self.callbacks:
            if hasattr(cb, "on_checkpoint"):
                cb.on_checkpoint(_host_step(state))


# ----------------------------------------------------------------------------- fit


def fit(model, data, config: TrainConfig | None = None, *, eval_data=None, mesh=None,
        workdir: str | os.PathLike | None = None, init_state: TrainState | None = None,
        callbacks: Sequence[Callback] = ()) -> FitResult:
    """Train ``model`` (one model, a stacked ensemble, or a Packed-Ensemble) with TU/Lightning semantics.

    Args:
      model: a Flax module with ``__call__(x, train: bool)`` (``'dropout'`` rng, mutable ``batch_stats``).
      data: ``(inputs [N, ...], targets)`` (host arrays): uint8 images ``[N, H, W, C]`` when
        ``config.preprocess`` is a Preprocess, any numeric features with ``preprocess=None``; integer
        class labels ``[N]`` in ``[0, C)`` (C: the model's output width), or float regression targets
        ``[N]`` / ``[N, D]`` with a regression ``loss_fn`` / ``objective``.
      config: a :class:`TrainConfig` (change settings with ``config.replace(...)``).
      eval_data: ``(inputs, targets)`` evaluated after every epoch (``val_loss``, ``val_acc``).
      mesh: a data mesh (``jaxuq.sharding.make_mesh``: batch sharded, params replicated; multi-process
        after ``initialize_distributed``, every process calls ``fit`` with the same arguments) or a
        member mesh (``member_mesh``: the members of an ensemble spread over devices).
      workdir: ``workdir/checkpoints`` (orbax, every ``checkpoint_every`` steps and at epoch ends; the
        newest intact one there is resumed) and ``workdir/metrics.jsonl`` (a :class:`JsonlLogger`).
      init_state: start from this state instead of a fresh one (its buffers are donated: pass a copy,
        ``jax.tree.map(jnp.copy, state)``, to keep using it).
      callbacks: :class:`Callback` objects (``jaxuq.train.callbacks``), called in order.

    Returns:
      FitResult(state, history, resumed_from): one dict per epoch run by this call (train_loss,
      [train_acc], [val_loss, val_acc], seconds, images_per_s; ensembles add per-member lists).
    """
    cfg = TrainConfig() if config is None else config
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(cfg).__name__} (use config.replace(...))")
    roles = split_mesh(mesh)
    x, y, num_classes = _data(model, data, "train", cfg)
    eval_data = None if eval_data is None else _data(model, eval_data, "eval", cfg, num_classes)[:2]
    plan = _Plan.of(len(x), cfg)
    _check_mesh(roles, cfg, plan)
    ckpt = Checkpointer(Path(workdir) / "checkpoints", cfg.max_to_keep) if workdir is not None else None
    callbacks = _callbacks(callbacks, workdir)
    k_model, k_data = jax.random.split(jax.random.key(cfg.seed))
    if init_state is not None and not isinstance(init_state, TrainState):
        raise TypeError(f"init_state must be a jaxuq.train.TrainState, got {type(init_state).__name__}")
    if init_state is None:
        init_state = create_train_state(model, _make_tx(cfg.optimizer, plan.spe), k_model,
                                        _sample(x, cfg.preprocess), cfg.num_members)
    for cb in callbacks:
        init_state = cb.on_fit_start(init_state) if hasattr(cb, "on_fit_start") else init_state
    init_state = init_state.replace(extras=jax.tree.map(jnp.copy, init_state.extras))  # donated: no aliases
    run_meta = _run_meta(plan, _fingerprint(cfg, x, y, plan)) if ckpt is not None else {}
    state, meta, resumed_from = _restore(ckpt, init_state, run_meta)
    members = _members_of(cfg, roles)
    lowering = None if members is None else members.lowering
    run = _Run(
        cfg=cfg, plan=plan, settings=_settings(cfg, roles, plan, callbacks), members=members,
        feed=_Feed(x, y, plan, k_data, on_device=cfg.on_device, roles=roles,
                   per_member=members is not None and members.per_member_inputs),
        validate=None if eval_data is None else partial(_validation, model, eval_data, cfg, roles, lowering),
        ckpt=ckpt, callbacks=callbacks, run_meta=run_meta,
    )
    state, history = run.train(roles.place(state), meta)
    return FitResult(state=state, history=history, resumed_from=resumed_from)
