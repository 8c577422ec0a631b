"""The generic training loop: ``fit(...)`` and ``train_and_evaluate(config)``.

Data on device: the uint8 training set is put on the device once; each epoch's order is
``permutation(fold_in(data_key, epoch), N)``; a jitted ``lax.scan`` runs a chunk of
``steps_per_call`` (or ``checkpoint_every``) steps, gathering, augmenting and training inside one
XLA program, with the state donated. The last partial batch of an epoch is kept (TU's
DataLoaders do not drop it) and runs as a chunk of one step with its own shape.

Streaming (``on_device=False``): the same chunks are gathered on the host and prefetched to the
device by a thread (``prefetch_to_device``) while the previous chunk computes.

Checkpoints (orbax) are written at chunk ends that fall on multiples of ``checkpoint_every`` steps
within the epoch and at every epoch end; a run restarts from the latest checkpoint with the same
chunk boundaries, so on CPU it ends bitwise equal to an uninterrupted run.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxuq.data.pipeline import Preprocess, epoch_permutation, prefetch_to_device
from jaxuq.train.checkpoint import Checkpointer, check_writable
from jaxuq.train.optim import recipe
from jaxuq.train.sharding import (
    batch_sharding,
    global_batch,
    is_multiprocess,
    process_batch_slice,
    replicate,
    replicated,
    to_host,
)
from jaxuq.train.state import TrainState, create_train_state, cross_entropy, make_eval_step, make_train_step

__all__ = ["fit", "FitResult", "evaluate", "predict", "train_and_evaluate"]


@dataclasses.dataclass
class FitResult:
    state: TrainState
    history: list[dict]
    resumed_from: int | None = None


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


def _validate(images, labels, name: str):
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"{name} images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{name} labels must have shape ({images.shape[0]},), got {labels.shape}")
    return images, labels.astype(np.int32)


def predict(
    state: TrainState,
    images,
    preprocess: Preprocess,
    batch_size: int = 1024,
    compute_dtype=jnp.float32,
    mesh=None,
    _cache: dict | None = None,
) -> np.ndarray:
    """Eval-mode logits ``[N, C]`` float32 for uint8 ``images [N, H, W, C]`` (last batch zero-padded,
    so one compiled shape serves the whole set; BN uses running statistics so padding is inert)."""
    key = (preprocess, jnp.dtype(compute_dtype).name, id(mesh))
    cache = _cache if _cache is not None else {}
    if key not in cache:
        eval_step = make_eval_step(preprocess, compute_dtype)
        if mesh is not None:
            cache[key] = jax.jit(
                eval_step,
                in_shardings=(replicated(mesh), batch_sharding(mesh)),
                out_shardings=replicated(mesh),
            )
        else:
            cache[key] = jax.jit(eval_step)
    fn = cache[key]
    images = np.asarray(images)
    n = len(images)
    bs = min(batch_size, n)
    if mesh is not None:
        bs = math.ceil(bs / mesh.size) * mesh.size
    multi = mesh is not None and is_multiprocess()
    sl = process_batch_slice(mesh, bs) if multi else None
    out = []
    for i in range(0, n, bs):
        x = images[i : i + bs]
        if len(x) < bs:
            x = np.concatenate([x, np.zeros((bs - len(x),) + x.shape[1:], x.dtype)])
        if multi:  # this process feeds its rows only; the logits come back replicated
            x = global_batch(mesh, x[sl], bs)
        out.append(fn(state, x))
    return np.concatenate([to_host(o) for o in out])[:n]


def evaluate(
    state, images, labels, preprocess, batch_size=1024, compute_dtype=jnp.float32, mesh=None, _cache=None
) -> dict:
    """``{'loss': mean CE, 'accuracy': fraction, 'logits': [N, C]}`` on a labelled set."""
    logits = predict(state, images, preprocess, batch_size, compute_dtype, mesh, _cache)
    labels = np.asarray(labels)
    loss = float(
        optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), jnp.asarray(labels)).mean()
    )
    return {"loss": loss, "accuracy": float((logits.argmax(-1) == labels).mean()), "logits": logits}


class _Progress:
    """rich progress bar (epoch/step, loss, images/s, ETA) unless quiet."""

    def __init__(self, total: int, done: int, quiet: bool):
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
        self.task = self.bar.add_task("train", total=total, completed=done, loss=float("nan"), ips=0.0)
        self.bar.start()

    def update(self, steps: int, epoch: int, epochs: int, loss: float, ips: float):
        if self.bar is not None:
            self.bar.update(
                self.task, advance=steps, description=f"epoch {epoch + 1}/{epochs}", loss=loss, ips=ips
            )

    def close(self):
        if self.bar is not None:
            self.bar.stop()


def fit(
    model,
    train_data: tuple[np.ndarray, np.ndarray],
    *,
    optimizer: Any,
    epochs: int,
    batch_size: int,
    preprocess: Preprocess,
    seed: int = 0,
    eval_data: tuple[np.ndarray, np.ndarray] | None = None,
    eval_batch_size: int = 1024,
    loss_fn: Callable = cross_entropy,
    compute_dtype=jnp.float32,
    drop_last: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    log_path: str | os.PathLike | None = None,
    quiet: bool = False,
    mesh=None,
    on_device: bool = True,
    steps_per_call: int = 100,
    init_state: TrainState | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> FitResult:
    """Train ``model`` with mini-batch SGD-style optimisation, TU/Lightning semantics.

    Args:
      model: a Flax module with ``__call__(x, train: bool)`` (``'dropout'`` rng, mutable ``batch_stats``).
      train_data: ``(images uint8 [N, H, W, C], labels int [N])`` (numpy).
      optimizer: an optax transformation, a recipe name (``jaxuq.train.optim.RECIPES``), or a
        function ``steps_per_epoch -> optax transformation`` (for per-epoch schedules).
      epochs, batch_size: as in Lightning; the last partial batch is kept unless ``drop_last``.
      preprocess: on-device augmentation/normalisation (``jaxuq.data.Preprocess``).
      seed: ``key(seed)`` splits into the model key (init, then step keys) and the data-order key.
      eval_data: evaluated after every epoch (accuracy, loss) when given.
      compute_dtype: ``jnp.bfloat16`` for bf16 compute with fp32 params/optimizer/loss/metrics.
      checkpoint_dir / checkpoint_every: orbax checkpoints every N steps (within the epoch) and at
        epoch ends; an existing checkpoint in the folder is resumed.
      log_path: JSONL, one line of metrics per epoch. quiet: no progress bar.
      mesh: a ``jax.sharding.Mesh`` with axis ``data`` for data-parallel training (batch sharded,
        params replicated); ``batch_size`` must be divisible by the number of devices.
        Multi-process (after ``initialize_distributed``, mesh over all processes' devices): every
        process calls ``fit`` with the same arguments and the same ``train_data``; with
        ``on_device=False`` each process gathers and transfers only its rows of every global batch
        (``process_batch_slice``), with ``on_device=True`` each process keeps the whole uint8 set on
        its devices and the global batch indices are replicated. Checkpoints need a folder that all
        processes share (tested: save, then resume, on localhost).
      on_device: keep the uint8 training set on the device (default) or stream chunks from host.
      steps_per_call: steps per jitted scan chunk when ``checkpoint_every`` is not given.
      init_state: start from this state instead of initialising the model.
      on_checkpoint: called with the step after each checkpoint save (hooks, tests).

    Returns:
      FitResult(state, history) with one dict per epoch (train_loss, train_acc, [val_loss, val_acc],
      images_per_s, lr-free; seconds).
    """
    images, labels = _validate(*train_data, "train")
    if eval_data is not None:
        eval_images, eval_labels = _validate(*eval_data, "eval")
    n = len(images)
    if batch_size <= 0 or batch_size > n:
        raise ValueError(f"batch_size must be in [1, {n}] (training set size), got {batch_size}")
    if mesh is not None and batch_size % mesh.size:
        raise ValueError(f"batch_size {batch_size} must be divisible by the {mesh.size} devices of the mesh")
    n_full, rem = divmod(n, batch_size)
    spe = n_full + (1 if rem and not drop_last else 0)
    multi = mesh is not None and is_multiprocess()
    if multi and not on_device and rem and not drop_last and rem % mesh.size:
        raise ValueError(
            f"multi-process streaming: the last partial batch ({rem} = {n} images mod batch_size "
            f"{batch_size}) is not divisible by the {mesh.size} devices of the mesh; pass drop_last=True "
            "or on_device=True"
        )
    total = epochs * spe
    chunk = int(checkpoint_every or steps_per_call)
    if chunk <= 0:
        raise ValueError(f"checkpoint_every/steps_per_call must be positive, got {chunk}")

    ckpt = Checkpointer(checkpoint_dir) if checkpoint_dir is not None else None
    if log_path is not None:
        check_writable(Path(log_path).parent)

    root = jax.random.key(seed)
    k_model, k_data = jax.random.split(root)
    tx = _make_tx(optimizer, spe)
    if init_state is None:
        sample = jnp.zeros((1,) + images.shape[1:], jnp.float32)
        state = create_train_state(model, tx, k_model, sample)
    else:
        state = init_state
    resumed_from, meta = None, None
    if ckpt is not None:
        state, meta = ckpt.restore(state)
        if meta is not None:
            resumed_from = int(state.step)

    bsh = batch_sharding(mesh) if mesh is not None else None
    if mesh is not None:
        state = replicate(state, mesh)

    step_fn = make_train_step(preprocess, loss_fn, compute_dtype, bsh)
    step_fn_rem = make_train_step(preprocess, loss_fn, compute_dtype, None)  # partial batch: no constraint

    def _scan(fn, s, xs):
        return jax.lax.scan(lambda c, b: fn(c, *b), s, xs)

    @partial(jax.jit, donate_argnums=0)
    def run_gather(s, all_x, all_y, idx):
        return _scan(step_fn, s, (all_x[idx], all_y[idx]))

    @partial(jax.jit, donate_argnums=0)
    def run_gather_rem(s, all_x, all_y, idx):
        return _scan(step_fn_rem, s, (all_x[idx], all_y[idx]))

    @partial(jax.jit, donate_argnums=0)
    def run_batches(s, xs, ys):
        return _scan(step_fn, s, (xs, ys))

    @partial(jax.jit, donate_argnums=0)
    def run_batches_rem(s, xs, ys):
        return _scan(step_fn_rem, s, (xs, ys))

    if on_device:  # the whole uint8 set on every device (each process holds its own copy)
        dev_x = replicate(images, mesh) if mesh is not None else jax.device_put(images)
        dev_y = replicate(labels, mesh) if mesh is not None else jax.device_put(labels)

    def chunks_of_epoch(epoch: int, pos: int):
        perm = np.asarray(epoch_permutation(k_data, epoch, n))
        while pos < spe:
            if pos < n_full:
                end = min(n_full, (pos // chunk + 1) * chunk)
                idx = perm[pos * batch_size : end * batch_size].reshape(end - pos, batch_size)
            else:
                end = spe
                idx = perm[n_full * batch_size :].reshape(1, rem)
            yield pos, end, idx
            pos = end

    history: list[dict] = []
    eval_cache: dict = {}
    progress = _Progress(total, int(state.step), quiet)
    step = int(state.step)
    acc = dict(meta.get("epoch_acc", {})) if meta else {}
    try:
        while step < total:
            epoch, pos = divmod(step, spe)
            if pos == 0 or not acc:
                acc = {"loss_sum": 0.0, "correct": 0, "count": 0, "seconds": 0.0}
            it = chunks_of_epoch(epoch, pos)
            if not on_device:
                x_sh = (
                    None
                    if mesh is None
                    else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
                )
                if multi:  # each process gathers and sends only its rows of every batch
                    it = ((p, e, _local_chunk(mesh, images, labels, idx)) for p, e, idx in it)
                else:
                    it = ((p, e, (images[idx], labels[idx])) for p, e, idx in it)
                it = _prefetched(it, x_sh)
            for _p, end, data in it:
                t0 = time.perf_counter()
                if on_device:
                    fn = run_gather if data.shape[1] == batch_size else run_gather_rem
                    idx = replicate(data, mesh) if mesh is not None else jnp.asarray(data)
                    state, m = fn(state, dev_x, dev_y, idx)
                else:
                    fn = run_batches if data[0].shape[1] == batch_size else run_batches_rem
                    state, m = fn(state, *data)
                m = to_host(m)
                dt = time.perf_counter() - t0
                cnt = int(np.sum(m["count"]))
                acc["loss_sum"] += float(np.sum(m["loss"] * m["count"]))
                acc["correct"] += int(np.sum(m["correct"]))
                acc["count"] += cnt
                acc["seconds"] += dt
                step = epoch * spe + end
                progress.update(len(m["loss"]), epoch, epochs, float(m["loss"][-1]), cnt / max(dt, 1e-9))
                if ckpt is not None and (end % chunk == 0 or end == spe):
                    meta_out = {
                        "epoch": epoch,
                        "pos": end,
                        "steps_per_epoch": spe,
                        "epoch_acc": acc if end < spe else {},
                    }
                    ckpt.save(state, meta_out)
                    if on_checkpoint is not None:
                        on_checkpoint(step)
            record = {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": acc["loss_sum"] / max(acc["count"], 1),
                "train_acc": acc["correct"] / max(acc["count"], 1),
                "seconds": acc["seconds"],
                "images_per_s": acc["count"] / max(acc["seconds"], 1e-9),
            }
            if eval_data is not None:
                ev = evaluate(
                    state,
                    eval_images,
                    eval_labels,
                    preprocess,
                    eval_batch_size,
                    compute_dtype,
                    mesh,
                    eval_cache,
                )
                record.update(val_loss=ev["loss"], val_acc=ev["accuracy"])
            history.append(record)
            acc = {}
            if log_path is not None:
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
    finally:
        progress.close()
        if ckpt is not None:
            ckpt.close()
    return FitResult(state=state, history=history, resumed_from=resumed_from)


def _local_chunk(mesh, images, labels, idx):
    """Chunk indices ``[steps, B]`` -> global ``(images, labels)`` sharded on the batch axis, built
    from this process's columns of ``idx`` only."""
    sl = process_batch_slice(mesh, idx.shape[1], axis=1, ndim=2)
    local = idx[:, sl]
    return global_batch(mesh, (images[local], labels[local]), idx.shape[1], axis=1)


def _prefetched(gen, sharding):
    """(pos, end, host batch) -> (pos, end, device batch), device_put up to two chunks ahead."""
    metas: collections.deque = collections.deque()

    def data_only():
        for p, e, b in gen:
            metas.append((p, e))
            yield b

    for b in prefetch_to_device(data_only(), size=2, sharding=sharding):
        p, e = metas.popleft()
        yield p, e, b


def train_and_evaluate(config: dict, workdir: str | os.PathLike | None = None) -> dict:
    """Train from a config dict (flax imagenet-example style) and evaluate on the test split.

    Keys: ``dataset`` (jaxuq.data.registry name), ``model`` (a jaxuq.models name, or a Flax module),
    ``model_kwargs``,
    ``optimizer`` (recipe name or optax transformation or f(steps_per_epoch)), ``epochs``,
    ``batch_size``, ``eval_batch_size``, ``seed``, ``compute_dtype`` ("float32"/"bfloat16"),
    ``data_dir``, ``val_split`` (fraction held out of train, seeded; else the test set validates,
    as in TU), ``basic_augment``, ``checkpoint_every``, ``quiet``, ``train_subset`` / ``test_subset``
    (first k images).
    Checkpoints and ``metrics.jsonl`` go to ``workdir``. Returns the history and test metrics.
    """
    from jaxuq import models
    from jaxuq.data.pipeline import train_val_split
    from jaxuq.data.registry import default_preprocess, load_dataset

    cfg = dict(config)
    ds = cfg["dataset"]
    x_tr, y_tr = load_dataset(ds, "train", cfg.get("data_dir"))
    x_te, y_te = load_dataset(ds, "test", cfg.get("data_dir"))
    if cfg.get("train_subset"):
        x_tr, y_tr = x_tr[: cfg["train_subset"]], y_tr[: cfg["train_subset"]]
    val = (x_te, y_te)
    if cfg.get("val_split"):
        tr_idx, va_idx = train_val_split(len(x_tr), cfg["val_split"], cfg.get("seed", 0))
        val = (x_tr[va_idx], y_tr[va_idx])
        x_tr, y_tr = x_tr[tr_idx], y_tr[tr_idx]
    model = cfg["model"]
    if isinstance(model, str):
        model = models.get(model, **cfg.get("model_kwargs", {}))
    pre = default_preprocess(ds, cfg.get("basic_augment", True))
    dtype = jnp.dtype(cfg.get("compute_dtype", "float32"))
    workdir = Path(workdir) if workdir is not None else None
    result = fit(
        model,
        (x_tr, y_tr),
        optimizer=cfg["optimizer"],
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        preprocess=pre,
        seed=cfg.get("seed", 0),
        eval_data=val,
        eval_batch_size=cfg.get("eval_batch_size", 1024),
        compute_dtype=dtype,
        checkpoint_dir=(workdir / "checkpoints") if workdir else None,
        checkpoint_every=cfg.get("checkpoint_every"),
        log_path=(workdir / "metrics.jsonl") if workdir else None,
        quiet=cfg.get("quiet", False),
    )
    test = evaluate(
        result.state,
        x_te[: cfg.get("test_subset") or None],
        y_te[: cfg.get("test_subset") or None],
        pre,
        cfg.get("eval_batch_size", 1024),
        dtype,
    )
    return {
        "history": result.history,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "state": result.state,
        "test_logits": test["logits"],
    }
