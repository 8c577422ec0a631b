"""The one training engine: ``fit(model, data, config)`` for a single model, a stacked deep ensemble
(``num_members=M``) or a Packed-Ensemble (``format_batch=RepeatTarget(M)``).

Data on device: the uint8 training set is put on the device once; each epoch's order is
``permutation(fold_in(data_key, epoch), N)`` (ensembles with ``member_shuffle``: one order per
member, from ``split(data_key, M)[m]``); the jitted ``train_chunk`` runs a ``lax.scan`` of
``steps_per_call`` (or ``checkpoint_every``) steps, gathering, augmenting and training inside one XLA
program, with the state donated. The last partial batch of an epoch is kept (TU's DataLoaders do not
drop it) and runs as a chunk of one step with its own shape.

Streaming (``on_device=False``): the same chunks are gathered on the host and prefetched to the
device by a thread (``prefetch_to_device``) while the previous chunk computes.

Ensembles: the state is M single-model states stacked on axis 0; ``train_step`` is mapped over the
members with the chosen lowering (``vmap`` / ``map`` / ``unroll``); a mesh with axis ``members``
places the members on devices (``shard_map``), a mesh with axis ``data`` shards the batch.

Checkpoints (orbax) are written at chunk ends that fall on multiples of ``checkpoint_every`` steps
within the epoch and at every epoch end, the epoch-end one carrying that epoch's record (train and
eval metrics), which a resumed run writes to the log if the run died before logging it. A run
restarts from the latest intact checkpoint with the same chunk boundaries, so on CPU it ends bitwise
equal to an uninterrupted run. Only process 0 draws the progress bar and writes the log.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jaxuq.data.pipeline import epoch_permutation, prefetch_to_device
from jaxuq.ensembles import MEMBER_AXIS, default_members, over_members, shard_members
from jaxuq.evaluation import predict
from jaxuq.train.checkpoint import Checkpointer, check_writable
from jaxuq.train.config import TrainConfig
from jaxuq.train.optim import recipe
from jaxuq.train.sharding import (
    global_batch,
    is_multiprocess,
    process_batch_slice,
    replicate,
    to_host,
)
from jaxuq.train.state import StepSettings, create_train_state, cross_entropy, train_step

if TYPE_CHECKING:
    from jaxuq.train.state import TrainState

__all__ = ["Callback", "FitResult", "fit", "train_and_evaluate", "train_chunk"]


@dataclasses.dataclass
class FitResult:
    state: TrainState
    history: list[dict]
    resumed_from: int | None = None


class Callback:
    """Hooks called on process 0 (subclass and override; clu's ``MetricWriter`` fits ``metric_writer=``)."""

    def on_checkpoint(self, step: int) -> None:
        pass

    def on_epoch_end(self, record: dict, state: TrainState) -> None:
        pass


# ----------------------------------------------------------------------------- the jitted chunk


@dataclasses.dataclass(frozen=True)
class _Members:
    """How the member axis of a stacked ensemble is run (static)."""

    lowering: str
    per_member_inputs: bool
    mesh: Any = None  # mesh with axis "members"


def _step_fn(settings: StepSettings, members: _Members | None):
    one = partial(train_step, settings=settings)
    if members is None:
        return one

    def body(state, x, y):
        if members.per_member_inputs:
            return over_members(one, members.lowering, state, x, y)
        return over_members(lambda s: one(s, x, y), members.lowering, state)

    if members.mesh is None:
        return body
    sm = PartitionSpec(MEMBER_AXIS)
    xs = sm if members.per_member_inputs else PartitionSpec()
    return jax.shard_map(body, mesh=members.mesh, in_specs=(sm, xs, xs), out_specs=sm)


@partial(jax.jit, static_argnames=("settings", "members"), donate_argnums=0)
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


def _val_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    """``val_loss`` (NLL of the mean member probabilities; CE for one model) and ``val_acc``."""
    if logits.ndim == 2:
        loss = float(cross_entropy(jnp.asarray(logits), jnp.asarray(labels)))
        return {"val_loss": loss, "val_acc": float((logits.argmax(-1) == labels).mean())}
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), -1)).mean(0)
    nll = float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12))))
    return {"val_loss": nll, "val_acc": float((probs.argmax(-1) == labels).mean())}


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


def _validate(images, labels, name: str, num_classes: int | None = None):
    """uint8 ``[N, H, W, C]`` images and integer labels in ``[0, num_classes)``, or a ValueError."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"{name} images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{name} labels must have shape ({images.shape[0]},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} labels must be integers (class indices), got dtype {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes)) if num_classes is not None else ()
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"{name} labels must be in [0, {num_classes}) (the model's output width), got {labels[i]} at "
            f"index {i} ({bad.size} out of range)"
        )
    return images, labels.astype(np.int32)


def _num_classes(model, sample) -> int:
    out = jax.eval_shape(
        lambda: model.init_with_output(
            {"params": jax.random.key(0), "dropout": jax.random.key(0)}, sample, train=False
        )[0]
    )
    return int(out.shape[-1])


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Batches of an epoch: ``n`` images, ``spe`` steps (last partial batch kept unless drop_last)."""

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
        spe = n_full + (1 if rem and not cfg.drop_last else 0)
        chunk = int(cfg.checkpoint_every or cfg.steps_per_call)
        return cls(n, cfg.batch_size, spe, n_full, rem, chunk, cfg.num_members, cfg.member_shuffle)

    def order(self, k_data, epoch: int) -> np.ndarray:
        """``[n]`` or ``[M, n]`` (per-member shuffles)."""
        if self.num_members is None or not self.member_shuffle:
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


# ----------------------------------------------------------------------------- the run


class _Progress:
    """rich progress bar (epoch/step, loss, images/s, ETA) unless quiet."""

    def __init__(self, total: int, done: int, quiet: bool, desc: str):
        self.bar = None
        if quiet:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[ips]:,.0f} img/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.desc = desc
        self.task = self.bar.add_task(desc, total=total, completed=done, loss=float("nan"), ips=0.0)
        self.bar.start()

    def update(self, steps: int, epoch: int, epochs: int, loss: float, ips: float):
        if self.bar is not None:
            desc = f"{self.desc} epoch {epoch + 1}/{epochs}"
            self.bar.update(self.task, advance=steps, description=desc, loss=loss, ips=ips)

    def close(self):
        if self.bar is not None:
            self.bar.stop()


def _host_step(state) -> int:
    return int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])


def _new_acc(shape) -> dict:
    z = np.zeros(shape)
    return {"loss_sum": z, "correct": z.copy(), "count": z.copy(), "nonfinite": z.copy(), "seconds": 0.0}


def _acc_to_json(acc: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in acc.items()}


def _acc_from_json(d: dict) -> dict:
    return {k: (v if k == "seconds" else np.asarray(v, np.float64)) for k, v in d.items()}


def _check_resume(meta: dict, plan: _Plan, where: str) -> None:
    """Refuse a resume whose epoch layout changed (batch size, dataset size, members)."""
    now = {
        "steps_per_epoch": plan.spe,
        "batch_size": plan.batch_size,
        "n_train": plan.n,
        "num_members": plan.num_members,
    }
    diff = {k: (meta[k], v) for k, v in now.items() if k in meta and meta[k] != v}
    if diff:
        changes = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items())
        raise ValueError(
            f"cannot resume from {where}: {changes} since it was written (the data order and the "
            "step count of an epoch would change). Resume with the original settings, or start a "
            "fresh run in another checkpoint directory."
        )


@dataclasses.dataclass
class _Run:
    """Everything a fit needs between chunks; built by ``fit``."""

    model: Any
    cfg: TrainConfig
    plan: _Plan
    images: np.ndarray
    labels: np.ndarray
    eval_data: tuple | None
    mesh: Any
    settings: StepSettings
    members: _Members | None
    k_data: jax.Array
    ckpt: Checkpointer | None
    log_path: Path | None
    callbacks: Sequence[Callback]
    metric_writer: Any
    main: bool = True

    def __post_init__(self):
        data_mesh = self.mesh is not None and MEMBER_AXIS not in self.mesh.axis_names
        self.multi = data_mesh and is_multiprocess()
        if self.cfg.on_device:  # the whole uint8 set on every device (each process holds its own copy)
            put = (lambda a: replicate(a, self.mesh)) if self.mesh is not None else jax.device_put
            self.dev_x, self.dev_y = put(self.images), put(self.labels)
        batch_axis = 1 if self.members is None or not self.members.per_member_inputs else 2
        spec = [None] * batch_axis + ["data"]
        self.x_sharding = (
            None
            if self.mesh is None
            else NamedSharding(self.mesh, PartitionSpec(*spec) if data_mesh else PartitionSpec())
        )

    def epoch_data(self, epoch: int, pos: int):
        """``(start, end, device data)``: indices (on device) or host-gathered batches (prefetched)."""
        it = self.plan.chunks(self.k_data, epoch, pos)
        if self.cfg.on_device:
            for p, e, idx in it:
                yield p, e, (replicate(idx, self.mesh) if self.mesh is not None else jnp.asarray(idx))
            return
        if self.multi:  # each process gathers and sends only its rows of every batch
            it = ((p, e, _local_chunk(self.mesh, self.images, self.labels, idx)) for p, e, idx in it)
        else:
            it = ((p, e, (self.images[idx], self.labels[idx])) for p, e, idx in it)
        yield from _prefetched(it, self.x_sharding)

    def train(self, state, meta: dict | None) -> tuple[Any, list[dict]]:
        cfg, plan = self.cfg, self.plan
        total, step = cfg.epochs * plan.spe, _host_step(state)
        shape = () if plan.num_members is None else (plan.num_members,)
        acc = _acc_from_json(meta["epoch_acc"]) if meta and meta.get("epoch_acc") else None
        if meta and meta.get("record"):
            self._log(meta["record"], only_if_missing=True)
        history: list[dict] = []
        desc = "train" if plan.num_members is None else f"train {plan.num_members} members"
        progress = _Progress(total, step, cfg.quiet or not self.main, desc)
        try:
            while step < total:
                epoch, pos = divmod(step, plan.spe)
                if pos == 0 or acc is None:
                    acc = _new_acc(shape)
                for start, end, data in self.epoch_data(epoch, pos):
                    state, m, dt = self._chunk(state, data)
                    self._check_finite(m, epoch, start)
                    _accumulate(acc, m, dt)
                    step = epoch * plan.spe + end
                    ips = float(np.max(acc["count"])) / max(acc["seconds"], 1e-9)  # images/s, epoch so far
                    progress.update(len(m["loss"]), epoch, cfg.epochs, float(np.mean(m["loss"][-1])), ips)
                    if end < plan.spe and self.ckpt is not None and end % plan.chunk == 0:
                        self._save(state, {"epoch": epoch, "pos": end, "epoch_acc": _acc_to_json(acc)})
                record = self._record(state, acc, epoch, step)
                if self.ckpt is not None:
                    self._save(state, {"epoch": epoch, "pos": plan.spe, "record": record})
                self._log(record)
                for cb in self.callbacks if self.main else ():
                    cb.on_epoch_end(record, state)
                history.append(record)
                acc = None
        finally:
            progress.close()
            if self.ckpt is not None:
                self.ckpt.close()
        return state, history

    def _chunk(self, state, data):
        t0 = time.perf_counter()
        if self.cfg.on_device:
            state, m = train_chunk(state, self.dev_x, self.dev_y, data, self.settings, self.members)
        else:
            state, m = train_chunk(state, *data, None, self.settings, self.members)
        m = to_host(m)
        return state, m, time.perf_counter() - t0

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
        p = self.plan
        meta.update(steps_per_epoch=p.spe, batch_size=p.batch_size, n_train=p.n, num_members=p.num_members)
        self.ckpt.save(state, meta)
        for cb in self.callbacks if self.main else ():
            cb.on_checkpoint(_host_step(state))

    def _record(self, state, acc: dict, epoch: int, step: int) -> dict:
        count = np.maximum(acc["count"], 1)
        loss, accuracy = acc["loss_sum"] / count, acc["correct"] / count
        record = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": float(np.mean(loss)),
            "train_acc": float(np.mean(accuracy)),
            "seconds": acc["seconds"],
            "images_per_s": float(np.sum(acc["count"])) / max(acc["seconds"], 1e-9),
        }
        if self.plan.num_members is not None:
            record.update(train_loss_members=loss.tolist(), train_acc_members=accuracy.tolist())
        if np.any(acc["nonfinite"]):
            record["nonfinite_steps"] = int(np.max(acc["nonfinite"]))
        if self.eval_data is not None:
            members = None if self.plan.num_members is None else self.members.lowering
            logits = predict(
                self.model,
                state.variables(),
                self.eval_data[0],
                preprocess=self.cfg.preprocess,
                batch_size=self.cfg.eval_batch_size,
                members=members,
                compute_dtype=self.cfg.compute_dtype,
                mesh=self.mesh,
            )
            record.update(_val_metrics(logits, self.eval_data[1]))
        return record

    def _log(self, record: dict, only_if_missing: bool = False) -> None:
        if not self.main:
            return
        if self.log_path is not None:
            path = Path(self.log_path)
            if (
                only_if_missing
                and path.exists()
                and any(
                    json.loads(ln).get("epoch") == record["epoch"]
                    for ln in path.read_text().splitlines()
                    if ln.strip()
                )
            ):
                return
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.metric_writer is not None and not only_if_missing:
            scalars = {
                k: v for k, v in record.items() if isinstance(v, int | float) and k not in ("epoch", "step")
            }
            self.metric_writer.write_scalars(record["step"], scalars)


def _accumulate(acc: dict, m: dict, dt: float) -> None:
    """Add a chunk's metrics (``[S]`` or ``[S, M]``) to the epoch sums, counting finite steps only."""
    finite = np.asarray(m["finite"], bool)
    count = np.where(finite, m["count"], 0)
    acc["loss_sum"] = acc["loss_sum"] + np.sum(np.where(finite, m["loss"] * m["count"], 0.0), axis=0)
    acc["correct"] = acc["correct"] + np.sum(np.where(finite, m["correct"], 0), axis=0)
    acc["count"] = acc["count"] + np.sum(count, axis=0)
    acc["nonfinite"] = acc["nonfinite"] + np.sum(~finite, axis=0)
    acc["seconds"] += dt


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


# ----------------------------------------------------------------------------- fit


def _members_of(cfg: TrainConfig, mesh) -> _Members | None:
    if cfg.num_members is None:
        return None
    member_mesh = mesh if mesh is not None and MEMBER_AXIS in mesh.axis_names else None
    if member_mesh is not None and cfg.num_members % member_mesh.shape[MEMBER_AXIS]:
        raise ValueError(
            f"num_members {cfg.num_members} is not divisible by the "
            f"{member_mesh.shape[MEMBER_AXIS]} devices of the members mesh"
        )
    return _Members(cfg.members or default_members(), cfg.member_shuffle, member_mesh)


def _check_mesh(mesh, cfg: TrainConfig, plan: _Plan) -> None:
    if mesh is None:
        return
    if MEMBER_AXIS in mesh.axis_names:
        if cfg.num_members is None:
            raise ValueError("a mesh with axis 'members' needs an ensemble (num_members=M)")
        if is_multiprocess():
            raise ValueError("member-parallel ensembles run in one process; use a 'data' mesh across hosts")
        return
    if "data" not in mesh.axis_names:
        raise ValueError(f"mesh axes must be ('data',) or ('members',), got {mesh.axis_names}")
    if cfg.batch_size % mesh.size:
        raise ValueError(
            f"batch_size {cfg.batch_size} must be divisible by the {mesh.size} devices of the mesh"
        )
    if is_multiprocess() and not cfg.on_device and plan.rem and not cfg.drop_last and plan.rem % mesh.size:
        raise ValueError(
            f"multi-process streaming: the last partial batch ({plan.rem} = {plan.n} images mod batch_size "
            f"{cfg.batch_size}) is not divisible by the {mesh.size} devices of the mesh; pass drop_last=True "
            "or on_device=True"
        )


def _place(state, mesh):
    if mesh is None:
        return state
    return shard_members(state, mesh) if MEMBER_AXIS in mesh.axis_names else replicate(state, mesh)


def fit(
    model,
    data,
    config: TrainConfig | None = None,
    *,
    eval_data=None,
    mesh=None,
    checkpoint_dir: str | os.PathLike | None = None,
    log_path: str | os.PathLike | None = None,
    init_state: TrainState | None = None,
    callbacks: Sequence[Callback] = (),
    metric_writer=None,
    **overrides,
) -> FitResult:
    """Train ``model`` (one model, a stacked ensemble, or a Packed-Ensemble) with TU/Lightning semantics.

    Args:
      model: a Flax module with ``__call__(x, train: bool)`` (``'dropout'`` rng, mutable ``batch_stats``).
      data: ``(images uint8 [N, H, W, C], labels int [N])`` (numpy); labels in ``[0, C)`` where ``C`` is
        the model's output width.
      config: a :class:`TrainConfig`; ``**overrides`` replace its fields (unknown keys raise).
      eval_data: ``(images, labels)`` evaluated after every epoch (``val_loss``, ``val_acc``).
      mesh: axis ``data``: data-parallel (batch sharded, params replicated; multi-process after
        ``initialize_distributed``, every process calls ``fit`` with the same arguments); axis
        ``members``: the members of an ensemble spread over devices.
      checkpoint_dir: orbax checkpoints every ``checkpoint_every`` steps and at epoch ends; an
        existing checkpoint there is resumed (the newest intact one).
      log_path: JSONL, one record per epoch (process 0). init_state: start from this state.
      callbacks: :class:`Callback` objects. metric_writer: an object with ``write_scalars(step, dict)``
        (clu ``MetricWriter``), called per epoch.

    Returns:
      FitResult(state, history): one dict per epoch run by this call (train_loss, train_acc,
      [val_loss, val_acc], seconds, images_per_s; ensembles add per-member lists).
    """
    cfg = (config or TrainConfig()).replace(**overrides)
    images, labels = _validate(*data, "train")
    sample = jnp.zeros((1,) + images.shape[1:], jnp.float32)
    num_classes = _num_classes(model, sample)
    images, labels = _validate(images, labels, "train", num_classes)
    if eval_data is not None:
        eval_data = _validate(*eval_data, "eval", num_classes)
    plan = _Plan.of(len(images), cfg)
    _check_mesh(mesh, cfg, plan)
    ckpt = Checkpointer(checkpoint_dir, cfg.max_to_keep) if checkpoint_dir is not None else None
    if log_path is not None:
        check_writable(Path(log_path).parent)
    k_model, k_data = jax.random.split(jax.random.key(cfg.seed))
    tx = _make_tx(cfg.optimizer, plan.spe)
    state = (
        init_state
        if init_state is not None
        else create_train_state(model, tx, k_model, sample, cfg.num_members)
    )
    resumed_from, meta = None, None
    if ckpt is not None:
        state, meta = ckpt.restore(state)
        if meta is not None:
            _check_resume(meta, plan, f"checkpoint {ckpt.latest_step()} under {ckpt.directory}")
            resumed_from = _host_step(state)
    settings = StepSettings(
        preprocess=cfg.preprocess,
        loss_fn=cfg.loss_fn or cross_entropy,
        compute_dtype=cfg.compute_dtype,
        format_batch=cfg.format_batch,
        grad_scale=1.0 / cfg.num_members if cfg.tu_gradient_scaling and cfg.num_members else 1.0,
        mesh=mesh if mesh is not None and MEMBER_AXIS not in mesh.axis_names else None,
    )
    run = _Run(
        model,
        cfg,
        plan,
        images,
        labels,
        eval_data,
        mesh,
        settings,
        _members_of(cfg, mesh),
        k_data,
        ckpt,
        Path(log_path) if log_path is not None else None,
        tuple(callbacks),
        metric_writer,
        main=jax.process_index() == 0,
    )
    state, history = run.train(_place(state, mesh), meta)
    return FitResult(state=state, history=history, resumed_from=resumed_from)


def train_and_evaluate(config: dict, workdir: str | os.PathLike | None = None) -> dict:
    """Train from a config dict (flax imagenet-example style) and evaluate on the test split.

    Keys: ``dataset`` (jaxuq.data.registry name), ``model`` (a jaxuq.models name, or a Flax module),
    ``model_kwargs``, ``data_dir``, ``val_split`` (fraction held out of train, seeded; else the test set
    validates, as in TU), ``basic_augment``, ``train_subset`` / ``test_subset`` (first k images), and
    any :class:`TrainConfig` key (``preprocess`` defaults to the dataset's).
    Checkpoints and ``metrics.jsonl`` go to ``workdir``. Returns the history and test metrics.
    """
    from jaxuq import models
    from jaxuq.data.pipeline import train_val_split
    from jaxuq.data.registry import default_preprocess, load_dataset

    cfg = dict(config)
    own = (
        "dataset",
        "model",
        "model_kwargs",
        "data_dir",
        "val_split",
        "basic_augment",
        "train_subset",
        "test_subset",
    )
    train_cfg = TrainConfig.from_dict({k: v for k, v in cfg.items() if k not in own})
    ds = cfg["dataset"]
    x_tr, y_tr = load_dataset(ds, "train", cfg.get("data_dir"))
    x_te, y_te = load_dataset(ds, "test", cfg.get("data_dir"))
    if cfg.get("train_subset"):
        x_tr, y_tr = x_tr[: cfg["train_subset"]], y_tr[: cfg["train_subset"]]
    val = (x_te, y_te)
    if cfg.get("val_split"):
        tr_idx, va_idx = train_val_split(len(x_tr), cfg["val_split"], train_cfg.seed)
        val = (x_tr[va_idx], y_tr[va_idx])
        x_tr, y_tr = x_tr[tr_idx], y_tr[tr_idx]
    model = cfg["model"]
    if isinstance(model, str):
        model = models.get(model, **cfg.get("model_kwargs", {}))
    if "preprocess" not in cfg:
        train_cfg = train_cfg.replace(preprocess=default_preprocess(ds, cfg.get("basic_augment", True)))
    workdir = Path(workdir) if workdir is not None else None
    result = fit(
        model,
        (x_tr, y_tr),
        train_cfg,
        eval_data=val,
        checkpoint_dir=(workdir / "checkpoints") if workdir else None,
        log_path=(workdir / "metrics.jsonl") if workdir else None,
    )
    k = cfg.get("test_subset") or None
    members = None if train_cfg.num_members is None else (train_cfg.members or default_members())
    logits = predict(
        model,
        result.state.variables(),
        x_te[:k],
        preprocess=train_cfg.preprocess,
        batch_size=train_cfg.eval_batch_size,
        members=members,
        compute_dtype=train_cfg.compute_dtype,
    )
    test = _val_metrics(logits, np.asarray(y_te[:k]))
    return {
        "history": result.history,
        "test_accuracy": test["val_acc"],
        "test_loss": test["val_loss"],
        "state": result.state,
        "test_logits": logits,
    }
