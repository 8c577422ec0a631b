"""One evaluation path: batched :func:`predict`, streaming :func:`evaluate`, and
:func:`classification_table` for users who already hold predictions.

All three return torch-uncertainty 0.13.0's names (``ClassificationRoutine``'s ``test/cls/Acc``,
``test/cal/ECE``, ``test/sc/AURC``, ``ood/AUROC``, ``test/cplx/params``, ``test/ens_Disagreement``,
...; the one table is :data:`jaxuq.metrics.suite.KEYS`) with float values; print them with
:func:`jaxuq.report.print_table`. The model side is :func:`jaxuq.forward.forward` (one model, a
stacked ensemble, a ``members_in_batch`` model or a sampler).

``evaluate(model, variables, data)`` runs one jitted step per batch (forward -> float32 softmax ->
the :mod:`jaxuq.metrics.streaming` states), so it never holds the logits:

* sum and binned metrics (Acc, Brier, NLL, Entropy, ECE, MCE, ``ens_*``, ``ood/Entropy``) keep
  O(1) state (a float32 sum and an int32 count; 16 bins), updated on device;
* the rank metrics need a global sort, so the step returns the per-sample float32 values and the
  **host** keeps them: confidence + correctness (8 bytes per ID sample) for aECE, SmECE and
  AURC/AUGRC/Cov@Risk/Risk@Cov, plus the OOD score (4 bytes per ID and per OOD sample) for
  AUROC/AUPR/FPR95 and SCOD: **12 bytes per ID sample and 4 per OOD sample**. They are computed
  at the end by :func:`jaxuq.metrics.suite.rank_metrics`, the function ``classification_table``
  uses too (one sort per score, on device);
* device memory during the pass is O(batch): each batch's per-sample values are copied to the
  host one batch behind, so the device computes the next batch meanwhile.

One compiled program serves every batch: the last batch is zero-padded to the compiled shape and a
``mask`` of its real rows goes to the streaming states' ``update`` (the padded rows' per-sample
values are dropped on the host). With a data-parallel ``mesh`` (``jaxuq.sharding.make_mesh``)
batches are sharded over its ``data`` axis and the states stay replicated: XLA reduces each batch's
per-device contributions (the streaming ``merge`` of the per-device states) inside the step.
Several processes work as in ``jaxuq.train``: each feeds its own rows of every batch
(``global_batch``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxuq import _validate
from jaxuq import distributions as _dist
from jaxuq._progress import progress_bar
from jaxuq.data.pipeline import is_arrays, num_batches, padded_batches
from jaxuq.forward import forward, members_in_batch
from jaxuq.losses.regression import regression_targets
from jaxuq.metrics import streaming as S
from jaxuq.metrics.calibration import _smece_conf_acc, top_label
from jaxuq.metrics.complexity import count_params
from jaxuq.metrics.regression import MEMBERS, predictive, qce_levels
from jaxuq.metrics.suite import KEYS, rank_metrics, table_core
from jaxuq.nn.conv import XLA_CPU_OPTIONS
from jaxuq.ood.criteria import get_criterion
from jaxuq.sharding import (
    MeshRoles,
    batch_sharding,
    global_batch,
    is_multiprocess,
    process_batch_slice,
    replicate,
    replicated,
    split_mesh,
    to_host,
)

__all__ = ["classification_table", "evaluate", "padded_batches", "predict", "regression_table"]


def _split_members(x, name: str, pending):
    """``[N, C]`` -> (probs, None); ``[M, N, C]`` -> (mean over members, members if M > 1)."""
    arr = _validate.check_probs(x, name, (2, 3), pending)
    if arr.ndim == 2:
        return arr.astype(jnp.float32), None
    arr = arr.astype(jnp.float32)
    mean = jnp.mean(arr, axis=0)
    return mean, (arr if arr.shape[0] > 1 else None)


def classification_table(
    probs=None,
    labels=None,
    *,
    ood_scores=None,
    ood_labels=None,
    ood_probs=None,
    logits=None,
    flops: int | None = None,
    params: int | None = None,
    smece: bool = True,
    scod_ood_cost: float = 0.5,
) -> dict[str, float]:
    """TU's test table from predictions.

    Args:
      probs: ``[N, C]`` probabilities, or ``[M, N, C]`` member probabilities (averaged over
        members; ``M > 1`` adds ``test/ens_{Disagreement, MI, Entropy}``). Give either ``probs``
        or ``logits``.
      labels: ``[N]`` integer labels.
      ood_scores: optional ``[N + N_ood]`` OOD scores (higher = more OOD): the ``N`` ID samples
        first, in ``probs`` order, then the OOD samples. Adds ``ood/{AUROC, AUPR, FPR95}`` and
        ``ood/SCOD_*``.
      ood_labels: optional ``[N + N_ood]`` 0/1 OOD indicators; default ``N`` zeros then ones.
      ood_probs: optional OOD-set probabilities ``[N_ood, C]`` or ``[M, N_ood, C]``: adds
        ``ood/Entropy`` (of the averaged probabilities) and, for ``M > 1``, ``ood/ens_*``.
      logits: ``[N, C]`` or ``[M, N, C]`` logits instead of ``probs`` (float32 softmax applied).
      flops, params: complexity numbers (see :func:`jaxuq.metrics.count_flops`,
        :func:`jaxuq.metrics.count_params`), reported as ``test/cplx/flops`` / ``params``.
      smece: compute ``test/cal/SmECE`` (host float64, the slowest metric).
      scod_ood_cost: TU's ``scod_ood_cost``.
    Returns:
      ``{key: float}`` with TU's metric names.
    """
    if (probs is None) == (logits is None):
        raise ValueError("give exactly one of `probs` or `logits`")
    if logits is not None:
        lg = _validate.as_array(logits, "logits", (2, 3))
        probs = jax.nn.softmax(lg.astype(jnp.float32), axis=-1)
    pending = []  # every value check is fetched in one device->host transfer
    p, members = _split_members(probs, "probs", pending)
    n, c = p.shape
    y = _validate.check_labels(labels, n, c, "labels", pending)
    kw = {} if members is None else {"member_probs": members}
    if ood_scores is not None:
        kw |= _ood_args(ood_scores, ood_labels, ood_probs, n, c, pending)
    elif ood_labels is not None or ood_probs is not None:
        raise ValueError("`ood_labels` / `ood_probs` need `ood_scores`")
    scod_ood_cost = _validate.check_fraction(scod_ood_cost, "scod_ood_cost")
    _validate.resolve(pending)
    out, conf, acc = table_core(p, y, ood_cost=scod_ood_cost, **kw)
    return _host_keys(out, conf, acc, smece, flops, params)


def _ood_args(ood_scores, ood_labels, ood_probs, n: int, c: int, pending) -> dict:
    """``table_core``'s OOD arguments, checked: scores ``[N + N_ood]`` (ID first), 0/1 labels,
    OOD-set (member-averaged) probabilities."""
    s = _validate.check_scores(ood_scores, "ood_scores", pending)
    if s.shape[0] <= n and ood_labels is None:
        raise ValueError(f"`ood_scores` has shape {s.shape}: expected N + N_ood > N = {n} scores (ID first)")
    if ood_labels is None:
        is_ood = jnp.concatenate([jnp.zeros((n,), jnp.int32), jnp.ones((s.shape[0] - n,), jnp.int32)])
    else:
        is_ood = _validate.check_binary(ood_labels, s.shape[0], "ood_labels", pending=pending)
    kw = {"ood_scores": s, "is_ood": is_ood}
    if ood_probs is not None:
        op, om = _split_members(ood_probs, "ood_probs", pending)
        if op.shape[1] != c:
            raise ValueError(f"`ood_probs` has {op.shape[1]} classes, `probs` has {c}")
        kw["ood_probs"] = op
        if om is not None:
            kw["ood_member_probs"] = om
    return kw


def _host_keys(device: dict, conf, acc, smece: bool, flops, params) -> dict[str, float]:
    """``{TU key: float}`` from the device results, plus SmECE (host float64) and the complexity keys."""
    res = {k: float(v) for k, v in jax.device_get(device).items()}
    if smece:
        conf, acc = jax.device_get((conf, acc))
        res[KEYS["smece"]] = _smece_conf_acc(np.asarray(conf), np.asarray(acc))[0]
    if flops is not None:
        res[KEYS["flops"]] = int(flops)
    if params is not None:
        res[KEYS["params"]] = int(params)
    return res


# ----------------------------------------------------------------------------- the jitted forward
class _Spec(NamedTuple):
    """What one compiled forward depends on (hashable: it keys the caches below)."""

    model: object
    preprocess: object
    dtype: str
    lowering: str | None
    roles: MeshRoles
    sampler: object

    @classmethod
    def of(cls, model, preprocess, compute_dtype, lowering, mesh, sampler) -> _Spec:
        return cls(model, preprocess, jnp.dtype(compute_dtype).name, lowering, split_mesh(mesh), sampler)

    def forward(self, variables, key, x):
        return forward(self.model, variables, x, preprocess=self.preprocess, compute_dtype=self.dtype,
                       lowering=self.lowering, mesh=self.roles, sampler=self.sampler, key=key)

    @property
    def row_axis(self) -> int:
        """Axis of the batch rows in the outputs: 1 under a member/sample axis, else 0."""
        stacked = self.sampler is not None or self.lowering is not None
        return 1 if stacked or members_in_batch(self.model) else 0


def _jit(fn, roles: MeshRoles, n_replicated: int, n_batch: int):
    """``jax.jit(fn)`` with jaxuq's XLA:CPU options (:data:`jaxuq.nn.conv.XLA_CPU_OPTIONS`); with a data
    mesh, the first ``n_replicated`` args and the outputs replicated,
    the next ``n_batch`` sharded on the batch axis."""
    mesh = roles.data
    if mesh is None:
        return jax.jit(fn, compiler_options=XLA_CPU_OPTIONS)
    rep, bat = replicated(mesh), batch_sharding(mesh)
    return jax.jit(fn, in_shardings=(rep,) * n_replicated + (bat,) * n_batch, out_shardings=rep,
                   compiler_options=XLA_CPU_OPTIONS)


@functools.cache
def _jitted_forward(spec: _Spec):
    return _jit(spec.forward, spec.roles, 2, 1)


def _to_device(batch: tuple, mesh) -> tuple:
    """Host batch -> jit inputs; on a multi-process mesh only this process's rows (``global_batch``)."""
    if mesh is None or not is_multiprocess():
        return batch
    rows = len(batch[0])
    sl = process_batch_slice(mesh, rows)
    return tuple(global_batch(mesh, a[sl], rows) for a in batch)


def _one_behind(outputs: Iterable) -> Iterator:
    """Yield each device output on the host one step late, so the device runs the next batch
    while the previous one is copied."""
    prev = None
    for out in outputs:
        if prev is not None:
            yield to_host(prev)
        prev = out
    if prev is not None:
        yield to_host(prev)


def _batch_key(key, *path: int):
    """The key of one batch (None without a sampler): ``fold_in`` of ``key`` along ``path``."""
    for i in path if key is not None else ():
        key = jax.random.fold_in(key, i)
    return key


def predict(model, variables, images, *, preprocess=None, batch_size: int = 1024, lowering=None,
            compute_dtype="float32", mesh=None, sampler=None, key=None) -> np.ndarray:
    """Eval-mode outputs of ``model`` over ``images [N, ...]`` in batches (:func:`jaxuq.forward.forward`):
    float32 ``[N, C]`` (a regression head: its parameter dict of such arrays), or ``[M, N, C]`` for
    stacked ``variables`` with a ``lowering``
    (``"vmap"``/``"map"``/``"unroll"``), a ``members_in_batch`` model (Packed-Ensembles: TU's
    ``[(M B), C]`` split per batch) or a ``sampler`` (batch ``i`` draws from ``fold_in(key, i)``).

    ``preprocess``: a :class:`jaxuq.data.Preprocess` applied on device to uint8 images (its
    ``.eval``), or None for inputs used as they are. The last batch is zero-padded so one compiled
    shape serves the whole set (BatchNorm uses running statistics: padding is inert); the jitted
    function is cached per (model, preprocess, dtype, lowering, mesh, sampler). ``mesh``: a
    data-parallel mesh (``jaxuq.sharding.make_mesh``: batches sharded over it), or a member mesh
    (``jaxuq.sharding.member_mesh``: members or samples split over devices).
    """
    images = np.asarray(images)
    if images.ndim < 1 or len(images) == 0:
        raise ValueError(f"`images` must be a non-empty batch [N, ...], got shape {images.shape}")
    spec = _Spec.of(model, preprocess, compute_dtype, lowering, mesh, sampler)
    fn, dmesh = _jitted_forward(spec), spec.roles.data
    variables = replicate(variables, dmesh) if dmesh is not None else variables
    batches = enumerate(padded_batches((images,), batch_size, dmesh))
    outs = (fn(variables, _batch_key(key, i), *_to_device(b, dmesh)) for i, (_, b) in batches)
    rows = (slice(None),) * spec.row_axis + (slice(len(images)),)  # outputs may be a pytree (a head's dict)
    return jax.tree.map(lambda *a: np.concatenate(a, axis=spec.row_axis)[rows], *_one_behind(outs))


# ----------------------------------------------------------------------------- evaluate
_ENS = {"disagreement": S.disagreement, "mi": S.mutual_information, "entropy": S.ensemble_entropy}


def _set_metrics(ood: bool, ensemble: bool) -> dict:
    """``{TU key: (streaming metric, inputs)}`` of the ID set (or the OOD set); inputs ``"pl"``:
    (mean probs, labels), ``"p"``: mean probs, ``"m"``: member probs. ECE's state also gives MCE."""
    pre = "ood_" if ood else ""
    ms = {} if ood else {KEYS[k]: (f(), "pl") for k, f in
                         (("acc", S.accuracy), ("brier", S.brier_score), ("nll", S.nll), ("ece", S.ece))}
    ms[KEYS[f"{pre}entropy"]] = (S.entropy(), "p")
    if ensemble:
        ms |= {KEYS[f"{pre}ens_{k}"]: (f(), "m") for k, f in _ENS.items()}
    return ms


def _init_states(ood: bool, ensemble: bool) -> dict:
    """Initial states of :func:`_set_metrics` plus a count of non-finite logits."""
    states = {k: m.init() for k, (m, _) in _set_metrics(ood, ensemble).items()}
    return states | {"nonfinite": jnp.zeros((), jnp.int32)}


def _make_step(spec: _Spec, score_fn, ood: bool, ensemble: bool):
    """``step(states, variables, key, n_valid, x [B, ...], y [B] (ID only)) -> (states, per-sample
    [B])``: (confidence, correctness, OOD score) for ID batches, (OOD score,) for OOD batches; rows
    ``>= n_valid`` are padding, masked out of the states (their per-sample values are dropped on host)."""
    metrics = _set_metrics(ood, ensemble)

    def step(states, variables, key, n_valid, x, *y):
        logits = spec.forward(variables, key, x)
        mask = jnp.arange(x.shape[0]) < n_valid
        labels = None if ood else y[0]
        probs = jax.nn.softmax(logits, axis=-1)
        mean = probs if probs.ndim == 2 else jnp.mean(probs, axis=0)
        args = {"pl": (mean, labels), "p": (mean,), "m": (probs,)}
        new = {k: m.update(states[k], *args[kind], mask=mask) for k, (m, kind) in metrics.items()}
        bad = ~jnp.isfinite(logits) & mask[:, None]
        new["nonfinite"] = states["nonfinite"] + jnp.sum(bad).astype(jnp.int32)
        score = score_fn(logits).astype(jnp.float32)
        return new, ((score,) if ood else (*top_label(mean, labels), score))

    return step


@functools.cache
def _jitted_step(spec: _Spec, criterion, ood: bool, ensemble: bool):
    """One compiled step per (forward, criterion, ID/OOD, ensemble): every batch, the short last one
    included (its padding is masked), runs the same program."""
    step = _make_step(spec, get_criterion(criterion), ood, ensemble)
    return _jit(step, spec.roles, 4, 1 if ood else 2)


def _finish(states: dict, ood: bool, ensemble: bool) -> dict:
    """``{TU key: float}`` from the final states; ValueError if any logit was not finite."""
    bad = int(states["nonfinite"])
    if bad:
        raise ValueError(f"the model gave {bad} non-finite logits on the {'OOD' if ood else 'ID'} set "
                         "(NaN/inf in the weights or the inputs?)")
    out = {k: float(m.compute(states[k])) for k, (m, _) in _set_metrics(ood, ensemble).items()}
    if not ood:
        out[KEYS["mce"]] = float(S.mce().compute(states[KEYS["ece"]]))
    return out


class _Pass:
    """One streaming pass of a model over the ID set, then the OOD set, with one progress bar."""

    def __init__(self, spec: _Spec, variables, criterion, key, batch_size: int, advance):
        self.spec, self.criterion, self.key, self.batch_size = spec, criterion, key, batch_size
        self.mesh = spec.roles.data  # batches sharded, states replicated
        self.variables = replicate(variables, self.mesh) if self.mesh is not None else variables
        self.advance, self.ensemble, self.num_classes = advance, None, None

    def _probe(self, batch) -> None:
        """Member count and classes from the first batch's output shape (abstract, nothing runs)."""
        x = jax.ShapeDtypeStruct(batch[0].shape, batch[0].dtype)
        shape = jax.eval_shape(self.spec.forward, self.variables, _batch_key(self.key, 0, 0), x).shape
        if len(shape) != 2 + self.spec.row_axis:
            raise ValueError(f"evaluate needs class scores [B, C] (or [M, B, C]), the model gave {shape}")
        self.ensemble, self.num_classes = self.spec.row_axis == 1 and shape[0] > 1, shape[-1]

    def run(self, data, ood: bool):
        """``(results, per-sample host arrays)`` over ``data``: ``(images, labels)`` (ID) or
        ``(images,)`` (OOD), or an iterable of such batches."""
        states, chunks = None, []

        def outputs():
            nonlocal states
            for i, (k, batch) in enumerate(padded_batches(data, self.batch_size, self.mesh)):
                if self.ensemble is None:
                    self._probe(batch)
                if not ood:
                    _validate.check_labels(np.asarray(batch[1][:k]), k, self.num_classes)
                if states is None:
                    states = _init_states(ood, self.ensemble)
                    states = replicate(states, self.mesh) if self.mesh is not None else states
                step = _jitted_step(self.spec, self.criterion, ood, self.ensemble)
                key, xy = _batch_key(self.key, int(ood), i), _to_device(batch, self.mesh)
                states, per_sample = step(states, self.variables, key, jnp.int32(k), *xy)
                self.advance()
                yield k, per_sample

        for k, per_sample in _one_behind(outputs()):
            chunks.append(tuple(a[:k] for a in per_sample))
        if states is None:
            raise ValueError(f"the {'OOD' if ood else 'ID'} data yielded no batch")
        return _finish(states, ood, self.ensemble), [np.concatenate(c) for c in zip(*chunks)]


def evaluate(model, variables, data, *, ood_data=None, preprocess=None, batch_size: int = 1024, lowering=None,
             criterion="msp", compute_dtype="float32", mesh=None, sampler=None, key=None,
             flops: int | None = None, params: int | None = None, num_bins: int = 15, smece: bool = True,
             scod_ood_cost: float = 0.5, progress: bool = True, dist_family: str | None = None,
             estimate: str = "mean", members: str = "mixture") -> dict[str, float]:
    """TU's full test table of ``model`` on ``data`` in one streaming pass (see the module doc).

    Args:
      model, variables: a flax module and its variables (stacked ``[M, ...]`` with ``lowering``).
      data: ``(images [N, ...], labels [N])`` host arrays, or an iterable of such batches.
      ood_data: optional OOD ``images [N_ood, ...]`` (or an iterable of image batches): adds
        ``ood/{AUROC, AUPR, FPR95, SCOD_*, Entropy}`` (and ``ood/ens_*``).
      preprocess: :class:`jaxuq.data.Preprocess` for uint8 images, or None (inputs used as they are).
      batch_size: rows per compiled batch (the last one zero-padded and masked).
      lowering: ``"vmap"``/``"map"``/``"unroll"`` for a stacked ensemble (or the samples of a
        ``sampler``); probabilities are averaged over members and ``M > 1`` adds ``test/ens_*``.
      criterion: TU's OOD criterion name (:mod:`jaxuq.ood.criteria`) or ``f(logits) -> [N]``.
      compute_dtype: forward dtype (softmax and metrics stay float32).
      mesh: a data-parallel or member mesh, as in :func:`predict`.
      sampler, key: a :class:`jaxuq.forward.Sampler` and its key (batch ``i`` of the ID set draws
        from ``fold_in(fold_in(key, 0), i)``, of the OOD set from ``fold_in(fold_in(key, 1), i)``).
      flops, params: ``test/cplx/*``; ``params`` defaults to the count of ``variables["params"]``.
      num_bins: ECE bins; TU's table uses 15 (the only value the streaming states hold).
      smece, scod_ood_cost: as :func:`classification_table`.
      progress: a progress bar over the batches.
      dist_family, estimate, members: regression (see below).
    Returns:
      ``{key: float}``: the keys and values of :func:`classification_table` on the same
      predictions; the rank metrics come from the same function (:func:`jaxuq.metrics.suite.rank_metrics`)
      and are equal, the sums differ by float32 summation order (measured <= 4e-7, SmECE the largest).

    Regression (TU's ``RegressionRoutine`` table, the keys of :func:`regression_table`) when the model
    has a distribution head (its ``dist_family``, or the ``dist_family`` argument) or the targets are
    floats: ``data`` is ``(inputs [N, ...], targets [N] or [N, D])``; ``estimate``, ``members`` and
    ``num_bins`` (QCE levels) as :func:`regression_table`. No OOD set.
    """
    family = dist_family if dist_family is not None else getattr(model, "dist_family", None)
    data, labels_dtype = _peek(data)
    if family is not None or np.issubdtype(labels_dtype, np.floating):
        if ood_data is not None:
            raise ValueError("`ood_data`: regression has no OOD evaluation (TU: NotImplementedError)")
        spec = _Spec.of(model, preprocess, compute_dtype, lowering, mesh, sampler)
        reg = _Reg.of(family, estimate, members, num_bins)
        return _evaluate_regression(spec, reg, variables, data, key=key, batch_size=batch_size,
                                    progress=progress, flops=flops, params=params)
    ood_data, scod_ood_cost = _classification_inputs(data, ood_data, num_bins, scod_ood_cost)
    spec = _Spec.of(model, preprocess, compute_dtype, lowering, mesh, sampler)
    totals = [num_batches(d, batch_size, spec.roles.data) for d in (data, ood_data) if d is not None]
    with progress_bar("evaluate", None if None in totals else sum(totals), quiet=not progress) as advance:
        run = _Pass(spec, variables, criterion, key, batch_size, advance)
        res, (conf, acc, id_score) = run.run(data, ood=False)
        ood = {}
        if ood_data is not None:
            ood_res, (ood_score,) = run.run(ood_data, ood=True)
            res |= ood_res
            is_ood = np.concatenate([np.zeros(len(id_score), np.int32), np.ones(len(ood_score), np.int32)])
            ood = {"ood_scores": np.concatenate([id_score, ood_score]), "is_ood": is_ood}
    rank = rank_metrics(conf, acc, **ood, ood_cost=scod_ood_cost)
    params = count_params(variables.get("params", {})) if params is None else params
    return res | _host_keys(rank, conf, acc, smece, flops, params)


def _classification_inputs(data, ood_data, num_bins, scod_ood_cost):
    """:func:`evaluate`'s checks of a classification call: ``(ood batches or None, scod_ood_cost)``."""
    if num_bins != 15:
        raise ValueError(f"num_bins={num_bins}: the streaming ECE state holds TU's 15 bins only")
    scod_ood_cost = _validate.check_fraction(scod_ood_cost, "scod_ood_cost")
    if is_arrays(data):
        if len(data) != 2:
            raise ValueError(f"`data` must be (images, labels), got a tuple of {len(data)} arrays")
        _validate.check_same_len("images", data[0], "labels", data[1])
    if ood_data is not None:
        ood_data = (ood_data,) if hasattr(ood_data, "shape") else ((np.asarray(b),) for b in ood_data)
    return ood_data, scod_ood_cost


# ----------------------------------------------------------------------------- regression
def _evaluate_regression(spec, reg, variables, data, *, key, batch_size, progress, flops, params) -> dict:
    """:func:`evaluate`'s regression branch: one streaming pass, then the complexity keys."""
    total = num_batches(data, batch_size, spec.roles.data)
    with progress_bar("evaluate", total, quiet=not progress) as advance:
        res = _regression_pass(spec, reg, variables, data, key, batch_size, advance)
    params = count_params(variables.get("params", {})) if params is None else params
    return res | _host_keys({}, None, None, False, flops, params)


def _peek(data):
    """``(data, targets dtype)`` without consuming an iterable of batches."""
    if is_arrays(data):
        return data, np.asarray(data[1]).dtype if len(data) > 1 else np.dtype(np.int32)
    it = iter(data)
    first = next(it, None)
    if first is None:  # the classification pass reports it
        return iter(()), np.dtype(np.int32)
    return itertools.chain([first], it), np.asarray(first[1]).dtype


@dataclasses.dataclass(frozen=True)
class _Reg:
    """The regression table's settings (hashable: part of the compiled step)."""

    family: str | None
    estimate: str
    members: str
    num_bins: int

    @classmethod
    def of(cls, family, estimate: str, members: str, num_bins: int) -> _Reg:
        family = None if family is None else _dist.check_family(family)
        _validate.check_choice(estimate, "estimate", ("mean", "mode"))
        _validate.check_choice(members, "members", MEMBERS)
        qce_levels(_validate.check_int(num_bins, "num_bins", 1))
        if family == "nig" and estimate == "mode":
            raise ValueError("estimate='mode': the 'nig' distribution has no mode (TU: NotImplementedError)")
        return cls(family, estimate, members, num_bins)

    def metrics(self, mixture: bool) -> dict:
        ms = {KEYS["mae"]: S.mae(), KEYS["mse"]: S.mse()}
        if self.family is not None:
            ms[KEYS["reg_nll"]] = S.distribution_nll(self.family, mixture)
            ms[KEYS["qce"]] = S.quantile_calibration_error(self.family, self.num_bins, "l1", mixture)
        return ms

    def mixture(self, outputs, stacked: bool) -> bool:
        m = jax.tree.leaves(outputs)[0].shape[0]
        return self.family is not None and stacked and self.members == "mixture" and m > 1

    def update(self, states: dict | None, outputs, targets, stacked: bool, mask=None) -> dict:
        """The states (None: fresh ones) after one batch of model ``outputs`` and float ``targets``."""
        point, dist, mixture = predictive(outputs, self.family, self.estimate, self.members, stacked)
        y = regression_targets(targets, point.shape)
        metrics = self.metrics(mixture)
        states = {k: m.init() for k, m in metrics.items()} if states is None else states
        new = {k: metrics[k].update(states[k], point, y, mask=mask) for k in (KEYS["mae"], KEYS["mse"])}
        if dist is not None:
            prob = (KEYS["reg_nll"], KEYS["qce"])
            new |= {k: metrics[k].update(states[k], dist, y, mask=mask) for k in prob}
        return new

    def compute(self, states: dict, mixture: bool) -> dict[str, float]:
        out = {k: float(m.compute(states[k])) for k, m in self.metrics(mixture).items()}
        out[KEYS["rmse"]] = float(np.sqrt(np.float32(out[KEYS["mse"]])))
        return out


def _regression_outputs(x, name: str, stacked_ok: bool = True):
    """Point predictions ``[N]`` / ``[N, D]`` / ``[M, N, D]`` (members), float and finite."""
    arr = _validate.as_array(x, name, (1, 2, 3) if stacked_ok else (1, 2))
    _validate.check_finite(arr, f"`{name}`")
    return arr.astype(jnp.float32)


def regression_table(preds=None, targets=None, *, dist=None, dist_family: str | None = None,
                     estimate: str = "mean", members: str = "mixture", num_bins: int = 15,
                     flops: int | None = None, params: int | None = None) -> dict[str, float]:
    """TU's ``RegressionRoutine`` test table from predictions.

    Args:
      preds: point predictions ``[N]`` / ``[N, D]``, or ``[M, N, D]`` for M members (averaged).
      targets: float targets ``[N]`` or ``[N, D]`` (finite).
      dist, dist_family: instead of ``preds``, a distribution head's parameters ``{name: [N, D]}`` (or
        ``[M, N, D]``) of the family (:mod:`jaxuq.distributions`); adds ``test/reg/NLL`` and
        ``test/cal/QCE``.
      estimate: the point estimate of a distribution, "mean" or "mode" (TU's ``dist_estimate``).
      members: "mixture" (default: the members' uniform mixture, a deep ensemble's predictive
        distribution) or "average" (TU 0.13.0's routine: one distribution with the members' averaged
        parameters).
      num_bins: QCE's number of levels (TU's ``num_bins_calibration_error``).
      flops, params: ``test/cplx/*``.
    Returns:
      ``{key: float}``: ``test/reg/{MAE, MSE, RMSE}`` (+ ``test/reg/NLL``, ``test/cal/QCE``).
    """
    if (preds is None) == (dist is None):
        raise ValueError("give exactly one of `preds` (point regression) or `dist` (with `dist_family`)")
    if dist is not None and dist_family is None:
        raise ValueError("`dist` needs its `dist_family`")
    reg = _Reg.of(dist_family if dist is not None else None, estimate, members, num_bins)
    y = _regression_outputs(targets, "targets", stacked_ok=False)
    if dist is None:
        out = _regression_outputs(preds, "preds")
    else:
        out = _dist.check_params(dist_family, dist, "dist")
        if jax.tree.leaves(out)[0].ndim not in (2, 3):
            shape = jax.tree.leaves(out)[0].shape
            raise ValueError(f"`dist` parameters must be [N, D] or [M, N, D], got {shape}")
    stacked = jax.tree.leaves(out)[0].ndim == 3
    res = reg.compute(reg.update(None, out, y, stacked), reg.mixture(out, stacked))
    return res | _host_keys({}, None, None, False, flops, params)


@functools.cache
def _jitted_regression_step(spec: _Spec, reg: _Reg):
    """``step(states, variables, key, n_valid, x [B, ...], y [B, ...]) -> states``; rows ``>= n_valid``
    are padding, masked out."""

    def step(states, variables, key, n_valid, x, y):
        out = spec.forward(variables, key, x)
        mask = jnp.arange(x.shape[0]) < n_valid
        new = reg.update(states["metrics"], out, y, spec.row_axis == 1, mask)
        bad = sum(jnp.sum(~jnp.isfinite(a) & _row(mask, a, spec.row_axis)) for a in jax.tree.leaves(out))
        return {"metrics": new, "nonfinite": states["nonfinite"] + bad.astype(jnp.int32)}

    return _jit(step, spec.roles, 4, 2)


def _row(mask, a, row_axis: int):
    return mask.reshape((1,) * row_axis + mask.shape + (1,) * (a.ndim - row_axis - 1))


def _regression_pass(spec: _Spec, reg: _Reg, variables, data, key, batch_size: int, advance) -> dict:
    """One streaming pass of ``model`` over ``(inputs, targets)`` batches -> TU's regression keys."""
    mesh = spec.roles.data
    variables = replicate(variables, mesh) if mesh is not None else variables
    states, mixture = None, None
    for i, (k, batch) in enumerate(padded_batches(data, batch_size, mesh)):
        if len(batch) != 2:
            raise ValueError(f"regression `data` must be (inputs, targets), got {len(batch)} arrays per "
                             "batch")
        _validate.check_finite(np.asarray(batch[1][:k]), "the targets")
        if states is None:
            x = jax.ShapeDtypeStruct(batch[0].shape, batch[0].dtype)
            shape = jax.eval_shape(spec.forward, variables, _batch_key(key, 0), x)
            mixture = reg.mixture(shape, spec.row_axis == 1)
            init = {k: m.init() for k, m in reg.metrics(mixture).items()}
            states = {"metrics": init, "nonfinite": jnp.zeros((), jnp.int32)}
            states = replicate(states, mesh) if mesh is not None else states
        step = _jitted_regression_step(spec, reg)
        states = step(states, variables, _batch_key(key, 0, i), jnp.int32(k), *_to_device(batch, mesh))
        advance()
    if states is None:
        raise ValueError("the data yielded no batch")
    if int(states["nonfinite"]):
        raise ValueError(f"the model gave {int(states['nonfinite'])} non-finite outputs (NaN/inf in the "
                         "weights or the inputs?)")
    return reg.compute(states["metrics"], mixture)
