"""One evaluation path: batched :func:`predict`, streaming :func:`evaluate`, and
:func:`classification_table` for users who already hold predictions.

All three return torch-uncertainty 0.13.0's names (``ClassificationRoutine``'s ``test/cls/Acc``,
``test/cal/ECE``, ``test/sc/AURC``, ``ood/AUROC``, ``test/cplx/params``, ``test/ens_Disagreement``,
...) with float values; print them with :func:`jaxuq.report.print_table`.

``evaluate(model, variables, data)`` runs one jitted ``eval_step`` per batch (forward ->
float32 softmax -> the :mod:`jaxuq.metrics.streaming` states), so it never holds the logits:

* sum and binned metrics (Acc, Brier, NLL, Entropy, ECE, MCE, ``ens_*``, ``ood/Entropy``) keep
  O(1) state (a float32 sum and an int32 count; 16 bins), updated on device;
* the rank metrics need a global sort, so their :class:`~jaxuq.metrics.streaming.ListState` keeps
  per-sample float32 values on the **host**: confidence + correctness (8 bytes per ID sample) for
  aECE, SmECE and AURC/AUGRC/Cov@Risk/Risk@Cov, plus the OOD score (4 bytes per ID and per OOD
  sample) for AUROC/AUPR/FPR95 and SCOD: **12 bytes per ID sample and 4 per OOD sample**. Their
  ``compute`` sorts once at the end, on device (transiently a few times those bytes);
* device memory during the pass is O(batch): each batch's per-sample values are copied to the
  host one batch behind, so the device computes the next batch meanwhile.

The last batch is zero-padded to the compiled shape: the forward pass is compiled once per
(model, preprocess, dtype, members, mesh) and the padded rows are sliced off before the metrics.
With a data-parallel ``mesh`` (``jaxuq.train.make_mesh``) batches are sharded over its ``data``
axis and the states stay replicated: XLA reduces each batch's per-device contributions (the
streaming ``merge`` of the per-device states) inside the step. Several processes work as in
``jaxuq.train``: each feeds its own rows of every batch (``global_batch``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxuq.metrics import _checks
from jaxuq.metrics import streaming as S
from jaxuq.metrics.calibration import _smece_conf_acc
from jaxuq.metrics.complexity import count_params
from jaxuq.metrics.selective import scod_metrics
from jaxuq.metrics.suite import table_core

__all__ = ["classification_table", "evaluate", "padded_batches", "predict"]


def _split_members(x, name: str, pending):
    """``[N, C]`` -> (probs, None); ``[M, N, C]`` -> (mean over members, members if M > 1)."""
    arr = _checks.check_probs(x, name, (2, 3), pending)
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
        lg = _checks.as_array(logits, "logits", (2, 3))
        probs = jax.nn.softmax(lg.astype(jnp.float32), axis=-1)
    pending = []  # every value check is fetched in one device->host transfer
    p, members = _split_members(probs, "probs", pending)
    n, c = p.shape
    y = _checks.check_labels(labels, n, c, "labels", pending)
    kw = {}
    if members is not None:
        kw["member_probs"] = members
    if ood_scores is not None:
        s = _checks.check_scores(ood_scores, "ood_scores", pending)
        if s.shape[0] <= n and ood_labels is None:
            raise ValueError(
                f"`ood_scores` has shape {s.shape}: expected N + N_ood > N = {n} scores (ID first)"
            )
        if ood_labels is None:
            is_ood = jnp.concatenate([jnp.zeros((n,), jnp.int32), jnp.ones((s.shape[0] - n,), jnp.int32)])
        else:
            is_ood = _checks.check_binary(ood_labels, s.shape[0], "ood_labels", pending=pending)
        kw.update(ood_scores=s, is_ood=is_ood)
        if ood_probs is not None:
            op, om = _split_members(ood_probs, "ood_probs", pending)
            if op.shape[1] != c:
                raise ValueError(f"`ood_probs` has {op.shape[1]} classes, `probs` has {c}")
            kw["ood_probs"] = op
            if om is not None:
                kw["ood_member_probs"] = om
    elif ood_labels is not None or ood_probs is not None:
        raise ValueError("`ood_labels` / `ood_probs` need `ood_scores`")
    scod_ood_cost = _checks.check_fraction(scod_ood_cost, "scod_ood_cost")
    _checks.resolve(pending)
    out, conf, acc = table_core(p, y, ood_cost=scod_ood_cost, **kw)
    res = {k: float(v) for k, v in jax.device_get(out).items()}
    if smece:
        conf, acc = jax.device_get((conf, acc))
        res["test/cal/SmECE"] = _smece_conf_acc(np.asarray(conf), np.asarray(acc))[0]
    if flops is not None:
        res["test/cplx/flops"] = int(flops)
    if params is not None:
        res["test/cplx/params"] = int(params)
    return res


# ----------------------------------------------------------------------------- batching
def _is_arrays(data) -> bool:
    """``data`` is a tuple of same-length arrays, not an iterable of batches."""
    return isinstance(data, tuple) and all(hasattr(a, "shape") for a in data)


def _batch_rows(n: int, batch_size: int, mesh) -> int:
    """Rows of one compiled batch: ``min(batch_size, n)`` rounded up to a multiple of the mesh size."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = max(1, min(int(batch_size), n))
    return rows if mesh is None else math.ceil(rows / mesh.size) * mesh.size


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    if len(x) == rows:
        return x
    return np.concatenate([x, np.zeros((rows - len(x),) + x.shape[1:], x.dtype)])


def padded_batches(data, batch_size: int, mesh=None) -> Iterator[tuple[int, tuple]]:
    """``(n_valid, batch)`` over ``data``, every batch zero-padded to one shape.

    ``data``: a tuple of same-length host arrays ``([N, ...], ...)`` cut into ``batch_size`` rows
    (rounded up to a multiple of ``mesh.size``), or an iterable of such tuples (each batch padded
    to the largest size seen so far). ``batch``: the padded tuple; ``n_valid``: its real rows.
    """
    if _is_arrays(data):
        arrays = tuple(np.asarray(a) for a in data)
        n = len(arrays[0])
        rows = _batch_rows(n, batch_size, mesh)
        for i in range(0, n, rows):
            yield min(rows, n - i), tuple(_pad_rows(a[i : i + rows], rows) for a in arrays)
        return
    rows = 0
    for batch in data:
        batch = tuple(np.asarray(a) for a in (batch if isinstance(batch, tuple | list) else (batch,)))
        k = len(batch[0])
        if k > rows:
            rows = _batch_rows(k, k, mesh)
        yield k, tuple(_pad_rows(a, rows) for a in batch)


def _num_batches(data, batch_size: int, mesh) -> int | None:
    if _is_arrays(data):
        n = len(data[0])
        return math.ceil(n / _batch_rows(n, batch_size, mesh))
    return len(data) if hasattr(data, "__len__") else None


def _to_device(batch: tuple, mesh) -> tuple:
    """Host batch -> jit inputs; on a multi-process mesh only this process's rows (``global_batch``)."""
    if mesh is None:
        return batch
    from jaxuq.train.sharding import global_batch, is_multiprocess, process_batch_slice

    if not is_multiprocess():
        return batch
    rows = len(batch[0])
    sl = process_batch_slice(mesh, rows)
    return tuple(global_batch(mesh, a[sl], rows) for a in batch)


def _replicate(tree, mesh):
    if mesh is None:
        return tree
    from jaxuq.train.sharding import replicate

    return replicate(tree, mesh)


def _one_behind(outputs: Iterable) -> Iterator:
    """Yield each device output on the host one step late, so the device runs the next batch
    while the previous one is copied."""
    from jaxuq.train.sharding import to_host

    prev = None
    for out in outputs:
        if prev is not None:
            yield to_host(prev)
        prev = out
    if prev is not None:
        yield to_host(prev)


def _progress(show: bool, total: int | None, description: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), disable=not show, transient=True)
    return bar, bar.add_task(description, total=total)


# ----------------------------------------------------------------------------- forward
def _split_mesh(mesh):
    """``(data mesh, member mesh)``: a mesh with a ``"members"`` axis (``jaxuq.ensembles.member_mesh``)
    shards the ensemble members, any other one (``jaxuq.train.make_mesh``) the batch."""
    from jaxuq.ensembles import MEMBER_AXIS

    if mesh is not None and MEMBER_AXIS in mesh.axis_names:
        return None, mesh
    return mesh, None


def _forward(model, preprocess, compute_dtype: str, members, mesh=None):
    """Un-jitted ``(variables, x [B, ...]) -> logits [B, C]`` (``[M, B, C]`` with ``members``, or for a
    model whose class says ``members_in_batch``: its ``[(M B), C]`` split by its ``num_estimators``),
    float32: :func:`jaxuq.train.eval_step` with this configuration (``mesh``'s member part, if any)."""
    from jaxuq.train.state import eval_step

    dtype, member_mesh = jnp.dtype(compute_dtype).name, _split_mesh(mesh)[1]
    fwd = lambda variables, x: eval_step(model, variables, x, preprocess, dtype, members, member_mesh)  # noqa: E731
    if not getattr(model, "members_in_batch", False):
        return fwd
    m = model.num_estimators
    return lambda variables, x: fwd(variables, x).reshape(m, x.shape[0], -1)


def _jit(fn, mesh, n_batch_args: int, n_replicated: int = 1):
    """``jax.jit(fn)``; with a data mesh, the first ``n_replicated`` args and the outputs replicated,
    the next ``n_batch_args`` sharded on the batch axis."""
    mesh = _split_mesh(mesh)[0]
    if mesh is None:
        return jax.jit(fn)
    from jaxuq.train.sharding import batch_sharding, replicated

    rep, bat = replicated(mesh), batch_sharding(mesh)
    return jax.jit(fn, in_shardings=(rep,) * n_replicated + (bat,) * n_batch_args, out_shardings=rep)


@functools.cache
def _jitted_forward(model, preprocess, compute_dtype: str, members, mesh):
    return _jit(_forward(model, preprocess, compute_dtype, members, mesh), mesh, 1)


def predict(
    model,
    variables,
    images,
    *,
    preprocess=None,
    batch_size: int = 1024,
    members=None,
    compute_dtype=jnp.float32,
    mesh=None,
) -> np.ndarray:
    """Eval-mode logits of ``model`` over ``images [N, ...]`` in batches: float32 ``[N, C]``, or
    ``[M, N, C]`` when ``members`` is a lowering (``"vmap"``/``"map"``/``"unroll"``, see
    :func:`jaxuq.ensembles.apply_members`) of stacked ``variables``, or when ``model``'s class has
    ``members_in_batch`` (Packed, BatchEnsemble, Masksembles, MIMO: output ``[(M B), C]``, TU's layout,
    split per batch into ``[M, B, C]`` with the model's ``num_estimators``).

    ``preprocess``: a :class:`jaxuq.data.Preprocess` applied on device to uint8 images (its
    ``.eval``), or None for inputs already preprocessed. The last batch is zero-padded so one
    compiled shape serves the whole set (BatchNorm uses running statistics: padding is inert);
    the jitted function is cached per (model, preprocess, dtype, members, mesh). ``mesh``: a
    data-parallel mesh (``jaxuq.train.make_mesh``: batches sharded over it), or a member mesh
    (``jaxuq.ensembles.member_mesh``: members sharded, variables placed by ``shard_members``).
    """
    images = np.asarray(images)
    if images.ndim < 2 or len(images) == 0:
        raise ValueError(f"`images` must be a non-empty batch [N, ...], got shape {images.shape}")
    fn = _jitted_forward(model, preprocess, jnp.dtype(compute_dtype).name, members, mesh)
    dmesh = _split_mesh(mesh)[0]
    variables = _replicate(variables, dmesh)
    batches = padded_batches((images,), batch_size, dmesh)
    outs = (fn(variables, *_to_device(b, dmesh)) for _, b in batches)
    return np.concatenate(list(_one_behind(outs)), axis=-2)[..., : len(images), :]


# ----------------------------------------------------------------------------- evaluate
_ENS = {"Disagreement": S.disagreement, "MI": S.mutual_information, "Entropy": S.ensemble_entropy}
_ID_RANK = {"test/sc/AURC": S.aurc, "test/sc/AUGRC": S.augrc,
            "test/sc/Cov_5Risk": functools.partial(S.cov_at_risk, 0.05),
            "test/sc/Risk_80Cov": functools.partial(S.risk_at_cov, 0.8), "test/cal/aECE": S.adaptive_ece}
_OOD_RANK = {"ood/AUROC": S.auroc, "ood/AUPR": S.aupr, "ood/FPR95": functools.partial(S.fpr_at_tpr, 0.95)}


def _set_metrics(ood: bool, ensemble: bool) -> dict:
    """``{TU key: (streaming metric, inputs)}`` of the ID set (or the OOD set); inputs ``"pl"``:
    (mean probs, labels), ``"p"``: mean probs, ``"m"``: member probs. ECE's state also gives MCE."""
    pre = "ood/" if ood else "test/"
    ms = {} if ood else {"test/cls/Acc": (S.accuracy(), "pl"), "test/cls/Brier": (S.brier_score(), "pl"),
                         "test/cls/NLL": (S.nll(), "pl"), "test/cal/ECE": (S.ece(), "pl")}
    ms[f"{pre}Entropy" if ood else "test/cls/Entropy"] = (S.entropy(), "p")
    if ensemble:
        ms |= {f"{pre}ens_{k}": (f(), "m") for k, f in _ENS.items()}
    return ms


def _init_states(ood: bool, ensemble: bool) -> dict:
    """Initial states of :func:`_set_metrics` plus a count of non-finite logits."""
    states = {k: m.init() for k, (m, _) in _set_metrics(ood, ensemble).items()}
    return states | {"nonfinite": jnp.zeros((), jnp.int32)}


def _make_step(fwd, score_fn, n_valid: int, ood: bool, ensemble: bool):
    """``step(states, variables, x [B, ...], y [B] (ID only)) -> (states, per-sample [n_valid])``:
    (confidence, correctness, OOD score) for ID batches, (OOD score,) for OOD batches."""
    metrics = _set_metrics(ood, ensemble)

    def step(states, variables, x, *y):
        logits = fwd(variables, x)[..., :n_valid, :]
        labels = None if ood else y[0][:n_valid]
        probs = jax.nn.softmax(logits, axis=-1)
        mean = probs if probs.ndim == 2 else jnp.mean(probs, axis=0)
        args = {"pl": (mean, labels), "p": (mean,), "m": (probs,)}
        new = {k: m.update(states[k], *args[kind]) for k, (m, kind) in metrics.items()}
        new["nonfinite"] = states["nonfinite"] + jnp.sum(~jnp.isfinite(logits)).astype(jnp.int32)
        score = score_fn(logits).astype(jnp.float32)
        if ood:
            return new, (score,)
        conf, acc = S.aurc().update(S.aurc().init(), mean, labels).arrays
        return new, (conf, acc, score)

    return step


@functools.cache
def _jitted_step(model, preprocess, dtype: str, members, mesh, criterion, n_valid: int, ood: bool,
                 ensemble: bool):
    from jaxuq.ood.criteria import get_criterion

    fwd = _forward(model, preprocess, dtype, members, mesh)
    step = _make_step(fwd, get_criterion(criterion), n_valid, ood, ensemble)
    return _jit(step, mesh, 1 if ood else 2, n_replicated=2)


def _finish(states: dict, ood: bool, ensemble: bool) -> dict:
    """``{TU key: float}`` from the final states; ValueError if any logit was not finite."""
    bad = int(states["nonfinite"])
    if bad:
        raise ValueError(f"the model gave {bad} non-finite logits on the {'OOD' if ood else 'ID'} set "
                         "(NaN/inf in the weights or the inputs?)")
    out = {k: float(m.compute(states[k])) for k, (m, _) in _set_metrics(ood, ensemble).items()}
    if not ood:
        out["test/cal/MCE"] = float(S.mce().compute(states["test/cal/ECE"]))
    return out


class _Pass:
    """One streaming pass of a model over the ID set, then the OOD set, with one progress bar."""

    def __init__(self, model, variables, preprocess, members, dtype, mesh, criterion, batch_size, bar):
        self.key = (model, preprocess, jnp.dtype(dtype).name, members, mesh, criterion)
        self.variables, self.batch_size, (self.bar, self.task) = variables, batch_size, bar
        self.mesh = _split_mesh(mesh)[0]  # the data mesh: batches sharded, states replicated
        self.ensemble = self.num_classes = self.states = None

    def run(self, data, ood: bool):
        """``(results, per-sample host arrays)`` over ``data``: ``(images, labels)`` (ID) or
        ``(images,)`` (OOD), or an iterable of such batches."""
        batches = padded_batches(data, self.batch_size, self.mesh)

        def outputs():
            for k, batch in batches:
                if self.ensemble is None:  # output shape -> member count and classes, from the first batch
                    shape = jax.eval_shape(_forward(*self.key[:5]), self.variables,
                                           jax.ShapeDtypeStruct(batch[0].shape, batch[0].dtype)).shape
                    self.ensemble, self.num_classes = len(shape) == 3 and shape[0] > 1, shape[-1]
                if not ood:
                    _checks.check_labels(np.asarray(batch[1][:k]), k, self.num_classes)
                if self.states is None:
                    self.states = _replicate(_init_states(ood, self.ensemble), self.mesh)
                step = _jitted_step(*self.key, k, ood, self.ensemble)
                self.states, per_sample = step(self.states, self.variables, *_to_device(batch, self.mesh))
                self.bar.advance(self.task)
                yield per_sample

        self.states = None
        chunks = list(_one_behind(outputs()))
        if not chunks:
            raise ValueError(f"the {'OOD' if ood else 'ID'} data yielded no batch")
        return _finish(self.states, ood, self.ensemble), [np.concatenate(c) for c in zip(*chunks)]


def _ood_keys(id_score, ood_score, acc, cost: float) -> dict:
    """AUROC/AUPR/FPR95 and SCOD from the per-sample OOD scores (ID first)."""
    scores = np.concatenate([id_score, ood_score])
    is_ood = np.concatenate([np.zeros(len(id_score), np.float32), np.ones(len(ood_score), np.float32)])
    out = {k: float(m().compute(S.ListState((scores, is_ood)))) for k, m in _OOD_RANK.items()}
    errors = np.concatenate([acc == 0, np.zeros(len(ood_score), bool)])
    scod = scod_metrics(scores, errors, is_ood.astype(np.int32), cost)
    return out | {f"ood/{k}": float(v) for k, v in scod.items()}


def evaluate(
    model,
    variables,
    data,
    *,
    ood_data=None,
    preprocess=None,
    batch_size: int = 1024,
    members=None,
    criterion="msp",
    compute_dtype=jnp.float32,
    mesh=None,
    flops: int | None = None,
    params: int | None = None,
    num_bins: int = 15,
    smece: bool = True,
    scod_ood_cost: float = 0.5,
    progress: bool = True,
) -> dict[str, float]:
    """TU's full test table of ``model`` on ``data`` in one streaming pass (see the module doc).

    Args:
      model, variables: a flax module and its variables (stacked ``[M, ...]`` with ``members``).
      data: ``(images [N, ...], labels [N])`` host arrays, or an iterable of such batches.
      ood_data: optional OOD ``images [N_ood, ...]`` (or an iterable of image batches): adds
        ``ood/{AUROC, AUPR, FPR95, SCOD_*, Entropy}`` (and ``ood/ens_*``).
      preprocess: :class:`jaxuq.data.Preprocess` for uint8 images, or None (inputs preprocessed).
      batch_size: rows per compiled batch (the last one zero-padded).
      members: ``"vmap"``/``"map"``/``"unroll"`` for a stacked ensemble (adds ``test/ens_*`` when
        ``M > 1``; probabilities are averaged over members), None for a single model.
      criterion: TU's OOD criterion name (:mod:`jaxuq.ood.criteria`) or ``f(logits) -> [N]``.
      compute_dtype: forward dtype (softmax and metrics stay float32).
      mesh: a data-parallel or member mesh, as in :func:`predict`.
      flops, params: ``test/cplx/*``; ``params`` defaults to the count of ``variables["params"]``.
      num_bins: ECE bins; TU's table uses 15 (the only value the streaming states hold).
      smece, scod_ood_cost: as :func:`classification_table`.
      progress: a rich progress bar over the batches.
    Returns:
      ``{key: float}``: the keys and values of :func:`classification_table` on the same
      predictions, up to float32 summation order (measured <= 4e-7, SmECE the largest).
    """
    if num_bins != 15:
        raise ValueError(f"num_bins={num_bins}: the streaming ECE state holds TU's 15 bins only")
    scod_ood_cost = _checks.check_fraction(scod_ood_cost, "scod_ood_cost")
    if _is_arrays(data):
        if len(data) != 2:
            raise ValueError(f"`data` must be (images, labels), got a tuple of {len(data)} arrays")
        _checks.check_same_len("images", data[0], "labels", data[1])
    if ood_data is not None:
        ood_data = (ood_data,) if hasattr(ood_data, "shape") else ((np.asarray(b),) for b in ood_data)
    totals = [_num_batches(d, batch_size, _split_mesh(mesh)[0]) for d in (data, ood_data) if d is not None]
    bar = _progress(progress, None if None in totals else sum(totals), "evaluate")
    variables = _replicate(variables, _split_mesh(mesh)[0])
    run = _Pass(model, variables, preprocess, members, compute_dtype, mesh, criterion, batch_size, bar)
    with bar[0]:
        res, (conf, acc, id_score) = run.run(data, ood=False)
        if ood_data is not None:
            ood_res, (ood_score,) = run.run(ood_data, ood=True)
            res |= _ood_keys(id_score, ood_score, acc, scod_ood_cost) | ood_res
    rank = S.ListState((conf, acc))  # shared by every (confidence, correctness) metric
    res |= {k: float(m().compute(rank)) for k, m in _ID_RANK.items()}
    if smece:
        res["test/cal/SmECE"] = float(S.smooth_ece().compute(rank))
    if flops is not None:
        res["test/cplx/flops"] = int(flops)
    res["test/cplx/params"] = int(params) if params is not None else count_params(variables.get("params", {}))
    return res
