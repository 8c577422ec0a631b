"""Weight averaging and trajectory ensembles as pure transforms: TU 0.13.0's ``SWA``, ``EMA``, ``SWAG``
and ``CheckpointCollector`` (``torch_uncertainty/methods/{swa,ema,swag,checkpoint_collector}.py``).

Each method is a frozen, hashable dataclass holding its settings (validated at construction) with
optax-style pure functions over a parameter pytree (usually ``variables["params"]``; any pytree of
float arrays works, e.g. the whole ``variables`` to average BatchNorm statistics too)::

    swa = SWA(cycle_start=2, cycle_length=1)
    st = swa.init(params)                        # SWAState (NamedTuple), jit-able, fits TrainState.extras
    st = swa.update(st, params, epoch)           # at the end of every epoch (epoch: 0-based, may be traced)
    avg = swa.params(st, params)                 # the average, or ``params`` before the first snapshot
    stats = bn_update(model, {"params": avg, "batch_stats": bs}, batches)   # torch's update_bn

Schedules follow TU, where ``ClassificationRoutine.on_validation_start`` calls ``update_wrapper(epoch)``
after the training of epoch ``epoch`` (0-based ``current_epoch``) and ``EMA.update_wrapper`` runs in
``training_step``, i.e. once per step **before** that step's optimizer update:

* ``SWA``: snapshot at the end of epoch ``e`` when ``e >= cycle_start`` and
  ``(e - cycle_start) % cycle_length == 0``; the average of the snapshots.
* ``EMA``: ``ema = momentum * ema + (1 - momentum) * params`` per step, starting from the initial params.
* ``SWAG``: snapshot when ``e > cycle_start`` (strict, as TU: the first at ``cycle_start +
  cycle_length``) and ``(e - cycle_start) % cycle_length == 0``; running mean and second moment, and
  the last ``max_num_models`` deviations ``params - mean`` (mean after the update) as rows, oldest
  first (TU's ``covariance_sqrt``, ``[K, numel]`` per parameter; here ``[max_num_models, *shape]`` per
  leaf, rows ``>= K`` zero). A sample is ``mean + sqrt(scale) * (sqrt(max(sq_mean - mean**2,
  var_clamp)) * z_diag + D^T z_cov / sqrt(max_num_models - 1))`` (the low-rank term only without
  ``diag_covariance``). The noise is an explicit argument (:class:`SWAGNoise`), so it can be injected.
* ``CheckpointCollector``: keeps a copy of the variables at the end of every epoch (no arguments),
  every ``cycle_length`` epochs from ``cycle_start`` (inclusive), or at the epochs of
  ``save_schedule``; predicts with the kept copies plus (``use_final_model``) the final model.

Prediction through the one forward pass: :meth:`SWAG.members` (samples + their BatchNorm update) and
:meth:`CheckpointCollector.members` give a stacked variables pytree (leaves ``[M, ...]``) for
``jaxuq.predict(..., lowering=...)`` / ``jaxuq.evaluate`` (the ``ens_*`` keys); SWA's average and EMA's
params are single variables. In ``fit`` each method is a :class:`WeightAveraging` callback: its state
in ``TrainState.extras``, EMA updated in the step (before the optimizer update, as TU), the others at
each epoch end, checkpointed and resumed with the run.

Deviation from TU 0.13.0 (see README): TU's ``SWA`` counts its first snapshot twice (it sets
``num_avgd_models = 1`` and then increments it, so the second snapshot is averaged in with weight
1/3); jaxuq averages the snapshots with equal weights. ``tests/test_averaging_parity.py`` pins both.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxuq._validate import check_int, check_real, is_traced
from jaxuq.nn import BatchNorm
from jaxuq.train.callbacks import Callback

__all__ = [
    "EMA",
    "EMAState",
    "SWA",
    "SWAG",
    "SWAGNoise",
    "SWAGState",
    "SWAState",
    "CheckpointCollector",
    "CollectorState",
    "WeightAveraging",
    "bn_update",
]


def _periodic(epoch, start: int, length: int, strict: bool):
    """``epoch >= start`` (``>`` if strict) and ``(epoch - start) % length == 0``; Python bool for a
    Python int, else a jnp bool (traced epochs)."""
    if isinstance(epoch, int | np.integer) and not isinstance(epoch, bool):
        after = epoch > start if strict else epoch >= start
        return bool(after and (epoch - start) % length == 0)
    e = jnp.asarray(epoch, jnp.int32)
    after = e > start if strict else e >= start
    return after & ((e - start) % length == 0)


def _select(take, new, old):
    return jax.tree.map(lambda a, b: jnp.where(take, a, b), new, old)


def _div(a, d):
    """``a / d`` for a scalar ``d`` as a true division, as torch does it: XLA rewrites a division by a
    broadcast scalar into a multiplication by its reciprocal (1 ulp off), which SWAG's
    ``sq_mean - mean**2`` then amplifies; the barrier keeps the division."""
    return a / jax.lax.optimization_barrier(jnp.broadcast_to(jnp.asarray(d, a.dtype), a.shape))


def _as_float_tree(params):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)


# ----------------------------------------------------------------------------------------------- SWA
class SWAState(NamedTuple):
    """``mean``: the running average (pytree like params); ``count``: snapshots averaged (int32)."""

    mean: Any
    count: jax.Array


@dataclasses.dataclass(frozen=True)
class SWA:
    """Stochastic Weight Averaging (TU ``SWA(core_model, cycle_start, cycle_length)``)."""

    cycle_start: int
    cycle_length: int

    def __post_init__(self):
        check_int(self.cycle_start, "cycle_start", minimum=0)
        check_int(self.cycle_length, "cycle_length", minimum=1)

    def collects(self, epoch):
        """Whether the end of ``epoch`` (0-based) takes a snapshot."""
        return _periodic(epoch, self.cycle_start, self.cycle_length, strict=False)

    def init(self, params) -> SWAState:
        return SWAState(jax.tree.map(jnp.zeros_like, _as_float_tree(params)), jnp.zeros((), jnp.int32))

    def update(self, state: SWAState, params, epoch) -> SWAState:
        """Average ``params`` in when :meth:`collects` ``epoch``: ``mean += (params - mean) / (n + 1)``."""
        n1 = (state.count + 1).astype(jnp.float32)
        new = jax.tree.map(lambda m, p: m + _div(p - m, n1), state.mean, _as_float_tree(params))
        take = self.collects(epoch)
        return SWAState(_select(take, new, state.mean), state.count + jnp.asarray(take, jnp.int32))

    def params(self, state: SWAState, current):
        """The averaged params, or ``current`` while nothing is averaged yet (TU's ``eval_forward``)."""
        return _select(state.count > 0, state.mean, current)


# ----------------------------------------------------------------------------------------------- EMA
class EMAState(NamedTuple):
    """``params``: the exponential moving average (pytree like params)."""

    params: Any


@dataclasses.dataclass(frozen=True)
class EMA:
    """Exponential Moving Average (TU ``EMA(core_model, momentum)``), updated once per optimisation step
    with the params *before* that step's optimizer update (TU calls it inside ``training_step``)."""

    momentum: float

    def __post_init__(self):
        check_real(self.momentum, "momentum", low=0.0, high=1.0, high_open=True)

    def init(self, params) -> EMAState:
        return EMAState(_as_float_tree(params))

    def update(self, state: EMAState, params) -> EMAState:
        m, r = self.momentum, 1 - self.momentum
        return EMAState(jax.tree.map(lambda e, p: e * m + p * r, state.params, _as_float_tree(params)))


# ---------------------------------------------------------------------------------------------- SWAG
class SWAGState(NamedTuple):
    """``mean``, ``sq_mean``: running first/second moments (pytrees like params); ``deviations``: per
    leaf ``[max_num_models, *shape]`` rows ``params - mean`` oldest first (``None`` with
    ``diag_covariance``); ``count``: snapshots taken (int32)."""

    mean: Any
    sq_mean: Any
    deviations: Any
    count: jax.Array


class SWAGNoise(NamedTuple):
    """Standard normal noise for one SWAG sample: ``diag`` like params; ``cov`` per leaf
    ``[max_num_models]`` (only the first ``K = min(count, max_num_models)`` entries matter; TU draws
    ``K``), ``None`` with ``diag_covariance``."""

    diag: Any
    cov: Any


@dataclasses.dataclass(frozen=True)
class SWAG:
    """SWA-Gaussian (TU ``SWAG(core_model, cycle_start, cycle_length, scale, diag_covariance,
    max_num_models, var_clamp, num_estimators)``). The low-rank covariance needs
    ``max_num_models >= 2`` (TU divides by ``sqrt(max_num_models - 1)``)."""

    cycle_start: int
    cycle_length: int
    scale: float = 1.0
    diag_covariance: bool = False
    max_num_models: int = 20
    var_clamp: float = 1e-6
    num_estimators: int = 16

    def __post_init__(self):
        check_int(self.cycle_start, "cycle_start", minimum=0)
        check_int(self.cycle_length, "cycle_length", minimum=1)
        check_real(self.scale, "scale", low=0.0)
        if not isinstance(self.diag_covariance, bool):
            raise TypeError(f"`diag_covariance` must be a bool, got {self.diag_covariance!r}")
        check_int(self.max_num_models, "max_num_models", minimum=0 if self.diag_covariance else 2)
        check_real(self.var_clamp, "var_clamp", low=0.0)
        check_int(self.num_estimators, "num_estimators", minimum=1)

    def collects(self, epoch):
        """Whether the end of ``epoch`` (0-based) takes a snapshot (``epoch > cycle_start``, strict)."""
        return _periodic(epoch, self.cycle_start, self.cycle_length, strict=True)

    def init(self, params) -> SWAGState:
        p = _as_float_tree(params)
        zeros = jax.tree.map(jnp.zeros_like, p)
        dev = None if self.diag_covariance else jax.tree.map(
            lambda a: jnp.zeros((self.max_num_models, *a.shape), jnp.float32), p)
        return SWAGState(zeros, zeros, dev, jnp.zeros((), jnp.int32))

    def update(self, state: SWAGState, params, epoch) -> SWAGState:
        """Take a snapshot of ``params`` when :meth:`collects` ``epoch`` (TU's ``update_wrapper``)."""
        p = _as_float_tree(params)
        n = state.count.astype(jnp.float32)
        mean = jax.tree.map(lambda m, x: _div(m * n, n + 1) + _div(x, n + 1), state.mean, p)
        sq = jax.tree.map(lambda m, x: _div(m * n, n + 1) + _div(x**2, n + 1), state.sq_mean, p)
        dev = state.deviations
        if dev is not None:
            full = state.count >= self.max_num_models  # TU: num_avgd_models + 1 > max_num_models
            row = jnp.minimum(state.count, self.max_num_models - 1)

            def push(buf, x, m):
                buf = jnp.where(full, jnp.roll(buf, -1, axis=0), buf)
                return buf.at[row].set(x - m)

            dev = jax.tree.map(push, dev, p, mean)
        take = self.collects(epoch)
        new = SWAGState(mean, sq, dev, state.count + 1)
        return _select(take, new, state)

    def deviations(self, state: SWAGState):
        """Host-side: per leaf the ``[K, *shape]`` deviation rows in TU's order (``K = min(count,
        max_num_models)``); TU's ``covariance_sqrt`` is their ``[K, numel]`` reshape."""
        if state.deviations is None:
            raise ValueError("this SWAG has diag_covariance=True: it keeps no deviation matrix")
        k = min(int(state.count), self.max_num_models)
        return jax.tree.map(lambda d: d[:k], state.deviations)

    def _check_fitted(self, state: SWAGState):
        if not is_traced(state.count) and int(state.count) == 0:
            raise ValueError("SWAG has no snapshot yet: call update() at an epoch it collects "
                             f"(epoch > cycle_start={self.cycle_start}) before sampling")

    def noise(self, state: SWAGState, key) -> SWAGNoise:
        """Standard normal :class:`SWAGNoise` for one sample from ``key`` (one draw, split over leaves)."""
        leaves, treedef = jax.tree.flatten(state.mean)
        sizes = [a.size for a in leaves]
        if state.deviations is not None:
            sizes += [self.max_num_models] * len(leaves)
        flat = jax.random.normal(key, (sum(sizes),), jnp.float32)
        parts = jnp.split(flat, np.cumsum(sizes)[:-1])
        diag = treedef.unflatten([z.reshape(a.shape) for z, a in zip(parts, leaves)])
        cov = None if state.deviations is None else treedef.unflatten(parts[len(leaves):])
        return SWAGNoise(diag, cov)

    def sample(self, state: SWAGState, noise: SWAGNoise):
        """One params sample from the SWAG posterior with the given noise (TU's ``_fullrank_sample``)."""
        self._check_fitted(state)
        sqrt_scale = self.scale**0.5

        def one(mean, sq, z, dev, zc):
            # XLA:CPU contracts this into an FMA (exact mean**2): up to 1 ulp of mean**2 from torch here
            var = jnp.maximum(sq - mean**2, self.var_clamp)
            s = jnp.sqrt(var) * z
            if dev is not None:
                rows = dev.reshape(dev.shape[0], -1)
                s = s + _div((rows.T @ zc).reshape(s.shape), (self.max_num_models - 1) ** 0.5)
            return mean + sqrt_scale * s

        if state.deviations is None:
            return jax.tree.map(lambda m, q, z: one(m, q, z, None, None), state.mean, state.sq_mean,
                                noise.diag)
        return jax.tree.map(one, state.mean, state.sq_mean, noise.diag, state.deviations, noise.cov)

    def sample_stack(self, state: SWAGState, key, num_samples: int | None = None):
        """``num_samples`` (default ``num_estimators``) params samples stacked on axis 0: leaves
        ``[M, ...]``; sample ``m`` uses ``noise(state, split(key, M)[m])``."""
        self._check_fitted(state)
        m = check_int(self.num_estimators if num_samples is None else num_samples, "num_samples", minimum=1)
        return self._stack(state, jax.random.split(key, m))

    @functools.partial(jax.jit, static_argnums=0)
    def _stack(self, state: SWAGState, keys):
        return jax.vmap(lambda k: self.sample(state, self.noise(state, k)))(keys)

    def members(self, state: SWAGState, key, variables, *, model=None, batches=None, preprocess=None,
                num_samples: int | None = None) -> dict:
        """TU's ``SWAG`` at test time as a stacked ensemble (leaves ``[M, ...]``): :meth:`sample_stack`'s
        params, ``variables``' other collections repeated for every sample (TU's samples are copies of the
        core model), and, given ``model`` and ``batches``, every sample's BatchNorm statistics
        recomputed over ``batches`` by :func:`bn_update` (TU ``SWAG.bn_update`` over the training
        loader). Predict with ``jaxuq.predict`` / ``jaxuq.evaluate(model, members, ..., lowering=...)``:
        ``[M, N, C]``. The samples are fixed for the whole test set, as TU's."""
        params = self.sample_stack(state, key, num_samples)
        m = jax.tree.leaves(params)[0].shape[0]
        out = {c: jax.tree.map(lambda a: jnp.broadcast_to(a, (m, *jnp.shape(a))), v)
               for c, v in variables.items() if c != "params"}
        out["params"] = params
        if batches is not None and out.get("batch_stats"):
            if model is None:
                raise ValueError("SWAG.members: the BatchNorm update over `batches` needs `model`")
            out["batch_stats"] = bn_update(model, out, batches, preprocess=preprocess, stacked=True)
        return out


# ------------------------------------------------------------------------------- CheckpointCollector
class CollectorState(NamedTuple):
    """``snapshots``: leaves ``[capacity, ...]`` (the first ``count`` are kept copies, oldest first)."""

    snapshots: Any
    count: jax.Array


@dataclasses.dataclass(frozen=True)
class CheckpointCollector:
    """Checkpoint ensembles (TU ``CheckpointCollector(core_model, cycle_start, cycle_length,
    save_schedule, use_final_model)``): give nothing (every epoch), ``cycle_start`` and
    ``cycle_length``, or ``save_schedule`` (epochs, 0-based)."""

    cycle_start: int | None = None
    cycle_length: int | None = None
    save_schedule: tuple[int, ...] | None = None
    use_final_model: bool = True

    def __post_init__(self):
        if self.save_schedule is not None:
            if isinstance(self.save_schedule, str | bytes) or not isinstance(self.save_schedule, Iterable):
                raise TypeError(f"`save_schedule` must be a sequence of ints, got {self.save_schedule!r}")
            sched = tuple(check_int(e, "save_schedule[i]", minimum=0) for e in self.save_schedule)
            object.__setattr__(self, "save_schedule", sched)
        if self.mode == "cycle":
            check_int(self.cycle_start, "cycle_start", minimum=0)
            check_int(self.cycle_length, "cycle_length", minimum=1)
        if not isinstance(self.use_final_model, bool):
            raise TypeError(f"`use_final_model` must be a bool, got {self.use_final_model!r}")

    @property
    def mode(self) -> str:
        """``"all"``, ``"cycle"`` or ``"schedule"`` (TU's rule; other combinations are refused)."""
        given = (self.cycle_start is not None, self.cycle_length is not None, self.save_schedule is not None)
        modes = {(False, False, False): "all", (True, True, False): "cycle", (False, False, True): "schedule"}
        if given not in modes:
            raise ValueError(
                f"CheckpointCollector: give nothing, cycle_start and cycle_length, or save_schedule; got "
                f"cycle_start={self.cycle_start}, cycle_length={self.cycle_length}, "
                f"save_schedule={self.save_schedule}")
        return modes[given]

    def collects(self, epoch):
        """Whether the end of ``epoch`` (0-based) keeps a copy."""
        mode = self.mode
        if mode == "cycle":
            return _periodic(epoch, self.cycle_start, self.cycle_length, strict=False)
        if mode == "all":
            return True if isinstance(epoch, int | np.integer) else jnp.asarray(True)
        if isinstance(epoch, int | np.integer):
            return int(epoch) in self.save_schedule
        return jnp.any(jnp.asarray(epoch, jnp.int32) == jnp.asarray(self.save_schedule or (-1,), jnp.int32))

    def kept_epochs(self, num_epochs: int) -> list[int]:
        """The epochs among ``range(num_epochs)`` whose end keeps a copy."""
        return [e for e in range(check_int(num_epochs, "num_epochs", minimum=0)) if self.collects(e)]

    def init(self, variables, capacity: int) -> CollectorState:
        """Room for ``capacity`` copies (e.g. ``len(kept_epochs(epochs))``); later copies are refused
        by :meth:`update` when concrete, dropped under a trace."""
        cap = check_int(capacity, "capacity", minimum=1)
        snaps = jax.tree.map(lambda a: jnp.zeros((cap, *jnp.shape(a)), jnp.result_type(a)), variables)
        return CollectorState(snaps, jnp.zeros((), jnp.int32))

    def update(self, state: CollectorState, variables, epoch) -> CollectorState:
        """Keep a copy of ``variables`` when :meth:`collects` ``epoch`` (TU's ``update_wrapper``)."""
        take = self.collects(epoch)
        cap = jax.tree.leaves(state.snapshots)[0].shape[0]
        if not is_traced(state.count) and not is_traced(take) and bool(take) and int(state.count) >= cap:
            raise ValueError(f"CheckpointCollector: capacity {cap} is full at epoch {epoch}; init() with a "
                             "larger capacity")
        snaps = jax.tree.map(lambda s, v: s.at[state.count].set(v, mode="drop"), state.snapshots, variables)
        count = state.count + jnp.asarray(take, jnp.int32)
        return CollectorState(_select(take, snaps, state.snapshots), count)

    def members(self, state: CollectorState, final_variables):
        """Host-side: the ensemble as stacked variables ``[M, ...]``: the kept copies, then
        ``final_variables`` if ``use_final_model``; the final model alone before any copy (TU)."""
        k = int(state.count)
        final = jax.tree.map(lambda a: jnp.asarray(a)[None], final_variables)
        if k == 0:
            return final
        kept = jax.tree.map(lambda s: s[:k], state.snapshots)
        if not self.use_final_model:
            return kept
        return jax.tree.map(lambda a, b: jnp.concatenate([a, b.astype(a.dtype)]), kept, final)


# ------------------------------------------------------------------------------------------ BN update
def _batch_moments(x):
    """Batch mean and unbiased variance over all axes but the last (torch's running-stat update)."""
    xf = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    n = math.prod(x.shape[:-1])
    mean = jnp.mean(xf, axis=axes)
    var = jnp.mean(jnp.square(xf - mean), axis=axes)
    return mean, var * (n / max(n - 1, 1))


def _bn_moments(model, variables, x, rngs):
    """``{module path: (mean, unbiased var)}`` of every :class:`jaxuq.nn.BatchNorm` input, train mode."""
    got = {}

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, BatchNorm) and context.method_name == "__call__":
            got[tuple(context.module.path)] = _batch_moments(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)
    return got


def _stats_tree(template, moments):
    """A fresh nested dict shaped like ``template`` with each recorded module's ``mean``/``var`` set."""
    def copy(node):
        return {k: copy(v) for k, v in node.items()} if isinstance(node, Mapping) else node

    out = copy(template)
    for path, (mean, var) in moments.items():
        node = out
        for p in path:
            node = node[p]
        node["mean"], node["var"] = mean, var
    return out


def bn_update(model, variables, batches: Iterable, *, preprocess=None, key=None, stacked: bool = False):
    """torch's ``swa_utils.update_bn`` (what TU's ``SWA``/``SWAG.bn_update`` call): reset every
    BatchNorm's running statistics and recompute them as the plain average over ``batches`` of the
    train-mode batch mean and unbiased variance (momentum ``None``: ``1/k`` at batch ``k``).

    Args:
      model, variables: a Flax model with :class:`jaxuq.nn.BatchNorm` layers and its variables
        (``stacked=True``: leaves ``[M, ...]``, one set of statistics per member, vmapped).
      batches: iterable of input batches ``[B, ...]`` or ``(inputs, ...)`` tuples (torch's rule);
        uint8 images through ``preprocess.eval`` if given.
      key: dropout key (train mode, as torch), folded with the batch index; None: no dropout rng.
    Returns:
      the new ``batch_stats`` pytree (``{}`` for a model without BatchNorm: nothing to do, as torch).
    """
    if not variables.get("batch_stats"):
        return {}

    def moments(v, x, rngs):
        return _bn_moments(model, v, x, rngs)

    fn = jax.jit(jax.vmap(moments, in_axes=(0, None, None)) if stacked else moments)
    stats, k = None, 0
    for i, batch in enumerate(batches):
        x = batch[0] if isinstance(batch, tuple | list) else batch
        x = preprocess.eval(jnp.asarray(x)) if preprocess is not None else jnp.asarray(x, jnp.float32)
        rngs = {} if key is None else {"dropout": jax.random.fold_in(key, i)}
        got = fn(variables, x, rngs)
        k += 1
        f = 1.0 / k
        stats = got if stats is None else {
            p: tuple(f * b + (1.0 - f) * a for a, b in zip(stats[p], got[p])) for p in got}
    if stats is None:
        raise ValueError("bn_update: `batches` is empty")
    return _stats_tree(variables["batch_stats"], stats)


# ------------------------------------------------------------------------------ the fit callback
def _stacked(state) -> bool:
    """Whether ``state`` is a stacked ensemble's (``step: [M]``)."""
    return jnp.ndim(state.step) > 0


@dataclasses.dataclass(frozen=True)
class WeightAveraging(Callback):
    """``fit`` callback running ``method`` (:class:`SWA`, :class:`EMA`, :class:`SWAG` or
    :class:`CheckpointCollector`) where TU's ``ClassificationRoutine`` calls its ``update_wrapper``;
    its NamedTuple state lives in ``state.extras[name]`` (donated, checkpointed, resumed with the run).

    - EMA: ``on_step`` with the params *before* the step's optimizer update (TU: in ``training_step``,
      before ``backward``/``step``): ``before_update`` is True.
    - SWA, SWAG (of ``state.params``), CheckpointCollector (of ``state.variables()``, TU deep-copies the
      whole model): ``on_epoch_end`` with the 0-based epoch (TU: ``on_validation_start`` after that
      epoch's training). ``capacity``: the collector's buffer (default: the length of its
      ``save_schedule``; else give ``len(collector.kept_epochs(epochs))``).

    A stacked ensemble keeps one method state per member (vmapped). :meth:`variables` gives what to
    predict with (single variables, or stacked ``[M, ...]`` when :attr:`stacked`).
    """

    method: Any
    name: str = "averaging"
    capacity: int | None = None

    def __post_init__(self):
        if not isinstance(self.method, SWA | EMA | SWAG | CheckpointCollector):
            raise TypeError("method must be a SWA, EMA, SWAG or CheckpointCollector, got "
                            f"{type(self.method).__name__}")
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"name must be a non-empty str, got {self.name!r}")
        if isinstance(self.method, CheckpointCollector):
            cap = self.capacity
            if cap is None and self.method.mode == "schedule":
                cap = len(self.method.save_schedule)
            if cap is None:
                raise ValueError("WeightAveraging(CheckpointCollector): give capacity "
                                 "(len(collector.kept_epochs(epochs)))")
            object.__setattr__(self, "capacity", check_int(cap, "capacity", minimum=1))

    @property
    def before_update(self) -> bool:
        """EMA runs on the state before the optimizer update (the engine reads this)."""
        return isinstance(self.method, EMA)

    @property
    def stacked(self) -> bool:
        """Whether :meth:`variables` is a stacked ensemble (SWAG samples, collected checkpoints)."""
        return isinstance(self.method, SWAG | CheckpointCollector)

    def _init(self, state):
        if isinstance(self.method, CheckpointCollector):
            return self.method.init(state.variables(), self.capacity)
        return self.method.init(state.params)

    def _update(self, st, state, epoch):
        if isinstance(self.method, CheckpointCollector):
            return self.method.update(st, state.variables(), epoch)
        return self.method.update(st, state.params, epoch)

    def on_fit_start(self, state):
        st = jax.vmap(self._init)(state) if _stacked(state) else self._init(state)
        return state.replace(extras={**state.extras, self.name: st})

    def on_step(self, state):
        if not self.before_update:
            return state
        st = self.method.update(state.extras[self.name], state.params)
        return state.replace(extras={**state.extras, self.name: st})

    def on_epoch_end(self, state, record: dict):
        if self.before_update:
            return state
        epoch, st = record["epoch"] - 1, state.extras[self.name]
        if _stacked(state):
            st = jax.vmap(lambda s, x: self._update(s, x, epoch))(st, state)
        else:
            st = self._update(st, state, epoch)
        return state.replace(extras={**state.extras, self.name: st})

    def variables(self, state, *, key=None, model=None, batches=None, preprocess=None) -> dict:
        """The variables TU's wrapper predicts with, from a single model's ``state``: SWA's average
        (the current params before any snapshot), EMA's params, SWAG's :meth:`SWAG.members` (``key``
        draws them), the collector's :meth:`CheckpointCollector.members`; the trained model's
        BatchNorm statistics, recomputed by :func:`bn_update` over ``batches`` when ``model`` and
        ``batches`` are given (SWA, SWAG and EMA; TU updates SWA's and SWAG's)."""
        if _stacked(state):
            raise ValueError("WeightAveraging.variables takes one model's state; index a member first")
        st, base = state.extras[self.name], state.variables()
        if isinstance(self.method, CheckpointCollector):
            return self.method.members(st, base)
        if isinstance(self.method, SWAG):
            if key is None:
                raise ValueError("SWAG samples need `key`")
            return self.method.members(st, key, base, model=model, batches=batches, preprocess=preprocess)
        params = self.method.params(st, state.params) if isinstance(self.method, SWA) else st.params
        out = {**base, "params": params}
        if model is not None and batches is not None and out.get("batch_stats"):
            out["batch_stats"] = bn_update(model, out, batches, preprocess=preprocess)
        return out
