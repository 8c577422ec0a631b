"""OOD detectors that fit on in-distribution data and read internal layers (scio's definitions).

Port of scio 1.1.0 (``scio.scores.classification``): Softmax, GradNorm, Gram, KNN,
``DeepMahalanobis`` (here Mahalanobis) and ODIN, for any Flax Linen model. Conventions are scio's: a
detector gives a *conformity* per sample and class (higher = more in-distribution); the
*confidence* is the conformity of the predicted class (scio's ``compute_confidence``), and the OOD
score ``-confidence`` follows TU's convention (higher = more OOD).

Optax style: a detector is a frozen, hashable configuration (``KNNConfig(layers=("avgpool",),
k=15)``), what it fits is a ``NamedTuple`` of arrays (a pytree: checkpoint it, shard it, pass it to
``jit``), and two pure functions do the work::

    det = KNNConfig(layers=("avgpool",), k=15)
    net = RecordedNet(model, variables, det.layers)         # a pytree too: variables are its leaves
    state = fit_detector(det, net, x_calib, y_calib)        # KNNState(features [N, D], sq_norms [N])
    logits, conf = score_detector(det, state, net, x_test)  # [N, C] each, numpy float32
    confidence(logits, conf)                                # [N]

Both walk the data in batches of ``batch_size`` rows, the last one zero-padded to the same shape
(:func:`jaxuq.evaluation.padded_batches`), through one jitted per-batch program each:
:func:`batch_features` (what calibration records) and :func:`batch_conformity`, with the
configuration static and the state and the net's variables as arguments. A new fit, new weights
or a partial last batch therefore compile nothing; one program exists per (configuration, module,
layers, batch shape, state shapes). Results are gathered on the host batch by batch, so the device
holds one batch (plus the state: KNN's reference features) at a time. Activations are NHWC;
Gram reads channels from the last axis, like scio reads them from axis 1 in NCHW.

The scio-named classes keep scio's mutable API on top of these functions::

    knn = KNN(["avgpool"], k=15).fit(model, variables, x_calib, y_calib)  # .config, .state, .net
    knn.confidence(x_test); knn.ood_score(x_test); knn.timer.report()
"""

from __future__ import annotations

import functools
import math
import numbers
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxuq import _validate
from jaxuq._progress import track
from jaxuq.data.pipeline import padded_batches
from jaxuq.ood.recorder import RecordedNet, check_finite, parse_spec

__all__ = [
    "DetectorConfig", "SoftmaxConfig", "GradNormConfig", "GramConfig", "KNNConfig", "MahalanobisConfig",
    "ODINConfig", "EmptyState", "GramState", "KNNState", "MahalanobisState", "fit_detector",
    "score_detector", "batch_features", "batch_conformity", "confidence", "ScoreTimer", "Detector",
    "Softmax", "GradNorm", "Gram", "KNN", "Mahalanobis", "ODIN", "normalize_samples", "fgm_direction",
]


# ----------------------------------------------------------------------------- timer
@dataclass
class ScoreTimer:
    """Per-operation timings like scio's ``ScoreTimer`` (newest first in the report)."""

    owner: str = ""
    entries: list = field(default_factory=list)  # (operation, n_samples, seconds)

    @contextmanager
    def __call__(self, operation: str, n_samples: int):
        t0 = time.perf_counter()
        yield
        self.entries.append((operation, int(n_samples), time.perf_counter() - t0))

    def report(self, print_it: bool = True) -> str:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"ScoreTimer report for {self.owner}")
        for col in ("Operation", "# samples", "Duration", "Per sample"):
            t.add_column(col)
        for op, n, s in reversed(self.entries):
            t.add_row(op, str(n), _fmt_s(s), _fmt_s(s / max(n, 1)))
        console = Console(width=100, record=True, force_terminal=False)
        with console.capture() as cap:
            console.print(t)
        text = cap.get()
        if print_it:
            print(text)
        return text

    def total(self, operation: str | None = None) -> float:
        return sum(s for op, _, s in self.entries if operation is None or op == operation)


def _fmt_s(s: float) -> str:
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("μs", 1e-6)):
        if s >= f:
            return f"{s / f:.4g} {unit}"
    return f"{s / 1e-9:.4g} ns"


# ----------------------------------------------------------------------------- helpers
def normalize_samples(x: jax.Array, ord: float | None) -> jax.Array:  # noqa: A002
    """scio ``normalize_samples``: divide each sample (flattened) by its ``ord``-norm; zero-norm
    samples are unchanged."""
    if ord is None:
        return x
    flat = x.reshape(x.shape[0], -1)
    if ord == math.inf:
        n = jnp.abs(flat).max(1)
    else:
        n = (jnp.abs(flat) ** ord).sum(1) ** (1.0 / ord)
    n = jnp.where(n == 0, 1.0, n)
    return x / n.reshape((-1,) + (1,) * (x.ndim - 1))


def fgm_direction(g: jax.Array, p: float = math.inf) -> jax.Array:
    """Direction of unit ``p``-norm maximising ``<g, d>`` per sample (scio's ``fgm_direction``)."""
    eps = jnp.finfo(g.dtype).eps
    g = jnp.where(jnp.abs(g) <= eps, 0.0, g)
    if p == math.inf:
        mag = jnp.ones_like(g)
    elif p > 1:
        q = p / (p - 1)
        mag = normalize_samples(jnp.abs(g), q) ** (q - 1)
    elif p == 1:
        a = jnp.abs(g).reshape(g.shape[0], -1)
        mask = (a == a.max(1, keepdims=True)).astype(g.dtype).reshape(g.shape)
        mag = normalize_samples(mask, 1.0)
    else:
        raise ValueError(f"Parameter p must satisfy p >= 1 (got {p!r})")
    return mag * jnp.sign(g)


def _replace(tree: dict, path: Sequence[str], value) -> dict:
    if not path:
        return value
    out = dict(tree)
    out[path[0]] = _replace(tree[path[0]], path[1:], value)
    return out


def _real(value, name: str, *, lo: float = -math.inf, lo_open: bool = False, finite: bool = False) -> float:
    """``value`` as a float: TypeError if it is not a real number, ValueError if NaN, below ``lo``
    (or equal to it with ``lo_open``) or, with ``finite``, infinite."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {value!r}")
    v = float(value)
    if math.isnan(v) or (finite and math.isinf(v)) or v < lo or (lo_open and v == lo):
        rng = f"{'>' if lo_open else '>='} {lo}" if lo > -math.inf else "not NaN"
        raise ValueError(f"{name} must be {rng}{' and finite' if finite else ''}; got {value!r}")
    return v


def _int(value, name: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {value!r}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}; got {value!r}")
    return int(value)


def _p_norm(flat: jax.Array, p: float) -> jax.Array:
    """Per-row ``p``-norm of ``flat [N, D]``."""
    if p == math.inf:
        return jnp.abs(flat).max(1)
    return (jnp.abs(flat) ** p).sum(1) ** (1.0 / p)


# ----------------------------------------------------------------------------- states
class EmptyState(NamedTuple):
    """What Softmax, GradNorm and ODIN fit: nothing."""


class GramState(NamedTuple):
    """Gram's per-layer bounds ``low, high`` ([C, S_l] each: the per-class ``cut_off`` and ``1 -
    cut_off`` quantiles of the S_l statistics) and ``expected`` [L], the mean calibration deviation
    per layer (the normaliser)."""

    low: tuple
    high: tuple
    expected: jax.Array


class KNNState(NamedTuple):
    """KNN's reference set: normalised calibration ``features`` [N, D] and their ``sq_norms`` [N]."""

    features: jax.Array
    sq_norms: jax.Array


class MahalanobisState(NamedTuple):
    """Per layer: class ``means`` [C, D_l] and the shared ``precisions`` [D_l, D_l] (NaN if singular)."""

    means: tuple
    precisions: tuple


# ----------------------------------------------------------------------------- configurations
@dataclass(frozen=True, kw_only=True)
class DetectorConfig:
    """A detector's settings: frozen and hashable (the static argument of the jitted programs).

    Fields:
      layers: layer specs the detector reads (see :class:`~jaxuq.ood.recorder.RecordedNet`); the net
        passed to :func:`fit_detector` / :func:`score_detector` must record them (it may record more).
      act_norm: if set, recorded activations are normalised per sample with this norm order.

    A subclass defines ``conformity(state, net, xb) -> (logits [B, C], conformity [B] or [B, C])``
    and, when it fits something, ``features(net, xb)`` (per-batch records, jitted) and
    ``calibrate(records, y) -> state`` (host).
    """

    layers: tuple[str, ...] = ()
    act_norm: float | None = None

    needs_layers: ClassVar[bool] = False
    records: ClassVar[bool] = False  # fit runs a pass over the calibration data (`features`)
    state_type: ClassVar[type] = EmptyState
    repr_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        if isinstance(self.layers, str) or not isinstance(self.layers, Sequence):
            raise TypeError(f"layers must be a sequence of layer specs like ['avgpool']; got {self.layers!r}")
        self._set("layers", tuple(self.layers))
        for spec in self.layers:
            parse_spec(spec)
        if self.needs_layers and not self.layers:
            raise ValueError(f"{self.name} needs at least one recorded layer (layers=[...])")
        if self.act_norm is not None:
            self._set("act_norm", _real(self.act_norm, "act_norm"))
            if self.act_norm == 0:
                raise ValueError(f"act_norm must be nonzero and not NaN; got {self.act_norm}")

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)

    @property
    def name(self) -> str:
        return type(self).__name__.removesuffix("Config")

    def check_fit(self, net: RecordedNet, n_calib: int, y) -> None:
        """Settings against the calibration set (its size, labels given or not)."""

    def features(self, net: RecordedNet, xb):
        raise NotImplementedError

    def calibrate(self, records, y):
        return EmptyState()

    def conformity(self, state, net: RecordedNet, xb):
        raise NotImplementedError

    def activations(self, acts: dict, concatenate: bool = False) -> list:
        """This detector's layers from ``acts``, normalised per sample by ``act_norm``;
        ``concatenate``: flattened and concatenated into one ``[B, D]``."""
        vals = [acts[s] for s in self.layers]
        if concatenate:
            vals = [jnp.concatenate([v.reshape(v.shape[0], -1) for v in vals], axis=1)]
        return [normalize_samples(v, self.act_norm) for v in vals]


@dataclass(frozen=True, kw_only=True)
class SoftmaxConfig(DetectorConfig):
    """Conformity = softmax of the logits (MSP baseline)."""

    def conformity(self, state, net, xb):
        out = net.forward(xb)[0]
        return out, jax.nn.softmax(out, 1)


@dataclass(frozen=True, kw_only=True)
class GradNormConfig(DetectorConfig):
    """GradNorm: ``||d/dθ  -mean_c log_softmax(f(x)/T)_c||_p`` over the recorded layers' parameters.

    Per-sample gradients (``vmap(grad)``) w.r.t. the parameters of the recorded layers (scio:
    ``Recorder.recorded_params``), flattened and concatenated; ``p = grad_norm`` (1).
    """

    temperature: float = 1.0
    grad_norm: float = 1.0
    needs_layers = True
    repr_fields = ("temperature", "grad_norm")

    def __post_init__(self):
        super().__post_init__()
        self._set("temperature", _real(self.temperature, "GradNorm temperature", lo=0, lo_open=True,
                                       finite=True))
        self._set("grad_norm", _real(self.grad_norm, "grad_norm", lo=0, lo_open=True))

    def check_fit(self, net, n_calib, y):
        if not jax.tree.leaves(net.recorded_params(self.layers)):
            raise RuntimeError("Recorded layers must have at least one learnable parameter for GradNorm")

    def conformity(self, state, net, xb):
        sub, t = net.recorded_params(self.layers), self.temperature

        def one(sub, x1):
            params = net.variables["params"]
            for n, v in sub.items():
                params = _replace(params, n.split("."), v)
            logits = net.forward(x1[None], {**net.variables, "params": params})[0][0]
            return -jax.nn.log_softmax(logits / t).mean(), logits

        g, logits = jax.vmap(jax.grad(one, has_aux=True), in_axes=(None, 0))(sub, xb)
        flat = jnp.concatenate([a.reshape(a.shape[0], -1) for a in jax.tree.leaves(g)], 1)
        return logits, _p_norm(flat, self.grad_norm)


def _gram_stats(a: jax.Array, max_order: int, separate_diagonal: bool) -> jax.Array:
    """scio ``Gram.layer_stats`` for NHWC activations: [N, ...] -> [N, orders * channels(*2)]."""
    if not 2 <= a.ndim <= 4:
        raise ValueError(f"Gram only supports per-sample activations as 1D, 2D or 3D (got {a.ndim - 1}D)")
    n = a.shape[0]
    if a.ndim == 4:  # NHWC -> [N, C, H*W]
        a3 = jnp.moveaxis(a, -1, 1).reshape(n, a.shape[-1], -1)
    else:  # implicitly single-channel
        a3 = a.reshape(n, 1, -1)
    nan = jnp.nan
    out = []
    for p in range(1, max_order + 1):
        fp = a3**p
        gp = jnp.einsum("ncs,nds->ncd", fp, fp, precision=jax.lax.Precision.HIGHEST)
        g = jnp.abs(gp)
        g = jnp.where(jnp.isfinite(g), g, nan) ** (1.0 / p)
        if separate_diagonal:
            out += [jnp.diagonal(g, axis1=1, axis2=2), jnp.triu(g, 1).sum(2)]
        else:
            out.append(jnp.triu(g).sum(2))
    return jnp.concatenate(out, axis=1)


def _gram_deviation(low, high, stats):
    """Deviation of ``stats`` [N, S] from ``low, high`` [C, S] -> [N, C] (inf/nan elements -> 0)."""
    s = stats[:, None, :]
    low_dev = (low - s) / jnp.abs(low)
    high_dev = (s - high) / jnp.abs(high)
    dev = jnp.where(s < low, low_dev, jnp.where(s > high, high_dev, 0.0))
    dev = jnp.where(jnp.isfinite(dev), dev, 0.0)
    return dev.sum(-1)


def _gram_layer_bounds(stats: np.ndarray, labels: np.ndarray, c: int, cut_off: float):
    """Per-class quantile bounds ``low, high`` [C, S] of one layer's statistics [N, S] (empty
    classes: ``inf, -inf``) and the summed calibration deviation from them."""
    low = np.full((c, stats.shape[1]), np.inf, np.float32)
    high = np.full((c, stats.shape[1]), -np.inf, np.float32)
    q = np.array([cut_off, 1 - cut_off], np.float32)
    total = np.float32(0.0)
    for k in range(c):
        cs = stats[labels == k]
        if len(cs):
            with np.errstate(all="ignore"):
                low[k], high[k] = np.nanquantile(cs.astype(np.float64), q, axis=0).astype(np.float32)
                dev = np.asarray(_gram_deviation(low[k][None], high[k][None], jnp.asarray(cs)))
            total = total + np.float32(dev.sum())
    return low, high, total


@dataclass(frozen=True, kw_only=True)
class GramConfig(DetectorConfig):
    """Gram matrices (Sastry & Oore 2020) as in scio: per-layer row sums of ``|F^p F^pT|^(1/p)``,
    per-class ``(cut_off, 1 - cut_off)`` quantiles on calibration data (labels = predictions by
    default), deviations normalised by the expected calibration deviation, summed over layers."""

    max_gram_order: int = 8
    cut_off: float = 0.1
    separate_diagonal: bool = False
    calib_labels: str = "pred"
    needs_layers = True
    records = True
    state_type = GramState
    repr_fields = ("calib_labels", "cut_off", "max_gram_order")

    def __post_init__(self):
        super().__post_init__()
        self._set("max_gram_order", _int(self.max_gram_order, "max_gram_order", 1))
        if not 0 < _real(self.cut_off, "Gram cut_off") < 0.5:
            raise ValueError(f"Gram cut_off must lie in (0, 0.5); got {self.cut_off}")
        self._set("cut_off", float(self.cut_off))
        if not isinstance(self.separate_diagonal, bool):
            raise TypeError(f"separate_diagonal must be a bool; got {self.separate_diagonal!r}")
        if self.calib_labels not in ("pred", "true"):
            raise ValueError(f"calib_labels must be 'pred' or 'true'; got {self.calib_labels!r}")

    def check_fit(self, net, n_calib, y):
        if self.calib_labels == "true" and y is None:
            raise ValueError("Gram(calib_labels='true') needs calibration labels y")

    def features(self, net, xb):
        logits, acts = net.forward(xb)
        return logits, [_gram_stats(a, self.max_gram_order, self.separate_diagonal)
                        for a in self.activations(acts)]

    def calibrate(self, records, y):
        logits, stats = records
        n, c = logits.shape
        labels = logits.argmax(1) if self.calib_labels == "pred" else y
        bounds = [_gram_layer_bounds(st, labels, c, self.cut_off) for st in stats]
        return GramState(low=tuple(jnp.asarray(b[0]) for b in bounds),
                         high=tuple(jnp.asarray(b[1]) for b in bounds),
                         expected=jnp.asarray([np.float32(b[2] / n) for b in bounds], jnp.float32))

    def conformity(self, state, net, xb):
        logits, stats = self.features(net, xb)
        tot = jnp.zeros(logits.shape, jnp.float32)
        for i, st in enumerate(stats):
            tot = tot + _gram_deviation(state.low[i], state.high[i], st) / state.expected[i]
        return logits, -jnp.where(jnp.isnan(tot), jnp.inf, tot)


@dataclass(frozen=True, kw_only=True)
class KNNConfig(DetectorConfig):
    """Deep k-NN (Sun et al. 2022) as in scio: conformity = minus the **squared** L2 distance to the
    k-th nearest calibration feature, features L2-normalised (``act_norm=2``) and concatenated over
    the recorded layers. Exact search, each batch of queries against all references."""

    k: int
    act_norm: float | None = 2.0
    needs_layers = True
    records = True
    state_type = KNNState
    repr_fields = ("k", "act_norm")

    def __post_init__(self):
        super().__post_init__()
        self._set("k", _int(self.k, "KNN k", 1))

    def check_fit(self, net, n_calib, y):
        if self.k > n_calib:
            raise ValueError(
                f"KNN needs 0 < k <= number of calibration samples; got k={self.k} with {n_calib} "
                f"calibration samples (use more calibration data or a smaller k)"
            )

    def features(self, net, xb):
        return self.activations(net.forward(xb)[1], concatenate=True)[0]

    def calibrate(self, records, y):
        feats = jnp.asarray(records)
        return KNNState(features=feats, sq_norms=jnp.sum(feats**2, 1))

    def conformity(self, state, net, xb):
        logits, acts = net.forward(xb)
        q = self.activations(acts, concatenate=True)[0]
        d2 = (jnp.sum(q**2, 1)[:, None] + state.sq_norms[None]
              - 2 * jnp.dot(q, state.features.T, precision=jax.lax.Precision.HIGHEST))
        kth = -jax.lax.top_k(-jnp.maximum(d2, 0.0), self.k)[0][:, -1]
        return logits, -kth


def _fgm_norm(value) -> float:
    return _real(value, "fgm_norm", lo=1)


@dataclass(frozen=True, kw_only=True)
class MahalanobisConfig(DetectorConfig):
    """Deep Mahalanobis (Lee et al. 2018) as scio's ``DeepMahalanobis`` (``epsilon=0``): per-class
    means (true labels) and a shared precision (inverse unbiased covariance of the residues) per
    layer; conformity per class = ``-sum_l w_l D2_l`` (NaN -> -inf). ``epsilon > 0`` adds scio's
    input perturbation towards the closest class (FGM with ``fgm_norm``)."""

    weights: tuple[float, ...] | None = None
    epsilon: float = 0.0
    fgm_norm: float = math.inf
    needs_layers = True
    records = True
    state_type = MahalanobisState
    repr_fields = ("epsilon", "fgm_norm", "weights")

    def __post_init__(self):
        super().__post_init__()
        self._set("epsilon", _real(self.epsilon, "epsilon", finite=True))
        self._set("fgm_norm", _fgm_norm(self.fgm_norm))
        if self.weights is not None:
            w = tuple(_real(v, "weights", finite=True) for v in self.weights)
            if len(w) != len(self.layers):
                raise ValueError(f"weights has {len(w)} entries for {len(self.layers)} layers")
            self._set("weights", w)

    def check_fit(self, net, n_calib, y):
        if n_calib < 2:
            raise ValueError("Mahalanobis needs at least 2 calibration samples for a covariance")
        if y is None:
            raise ValueError("Mahalanobis needs calibration labels y")

    def features(self, net, xb):
        logits, acts = net.forward(xb)
        return logits, [v.reshape(v.shape[0], -1) for v in self.activations(acts)]

    def calibrate(self, records, y):
        logits, feats = records
        means, precisions = [], []
        for f in feats:
            mu, prec = _class_gaussian(f.astype(np.float64), y, logits.shape[1])
            means.append(jnp.asarray(mu, jnp.float32))
            precisions.append(jnp.asarray(prec, jnp.float32))
        return MahalanobisState(means=tuple(means), precisions=tuple(precisions))

    def _d2(self, state, acts) -> list:
        """Per layer, the squared Mahalanobis distances [B, C] to every class mean."""
        out = []
        for v, mu, prec in zip(self.activations(acts), state.means, state.precisions):
            r = v.reshape(v.shape[0], 1, -1) - mu[None]
            out.append(jnp.einsum("ncd,de,nce->nc", r, prec, r, precision=jax.lax.Precision.HIGHEST))
        return out

    def conformity(self, state, net, xb):
        logits, acts = net.forward(xb)
        d2s = self._d2(state, acts)
        if self.epsilon:
            d2s = [self._perturbed_d2(state, net, xb, layer, d2) for layer, d2 in enumerate(d2s)]
        w = jnp.asarray(self.weights if self.weights is not None else [1.0] * len(self.layers), jnp.float32)
        d2 = jnp.stack(d2s, -1) @ w
        return logits, -jnp.where(jnp.isnan(d2), jnp.inf, d2)

    def _perturbed_d2(self, state, net, xb, layer: int, d2):
        """scio's input perturbation for one layer: a step of ``epsilon`` (FGM) that decreases the
        distance to the closest class, then that layer's distances at the perturbed input."""
        cand = jnp.argmin(jnp.where(jnp.isnan(d2), jnp.inf, d2), 1)

        def neg_d2(xx):
            d = self._d2(state, net.forward(xx)[1])[layer]
            return -jnp.take_along_axis(d, cand[:, None], 1).sum()

        xa = xb + self.epsilon * fgm_direction(jax.grad(neg_d2)(xb), self.fgm_norm)
        return self._d2(state, net.forward(xa)[1])[layer]


def _class_gaussian(f: np.ndarray, y: np.ndarray, c: int) -> tuple[np.ndarray, np.ndarray]:
    """Class means [C, D] (NaN for an absent class) and the precision [D, D] of the residues
    ``f - mean[y]`` (inverse of the unbiased covariance, like torch's ``Tensor.cov``; NaN if
    singular) of features ``f`` [N, D], float64."""
    mu = np.stack([f[y == k].mean(0) if np.any(y == k) else np.full(f.shape[1], np.nan) for k in range(c)])
    cov = np.cov((f - mu[y]).T)
    try:
        prec = np.linalg.inv(np.atleast_2d(cov))
        if not np.all(np.isfinite(prec)):
            raise np.linalg.LinAlgError
    except np.linalg.LinAlgError:
        prec = np.full((f.shape[1], f.shape[1]), np.nan)
    return mu, prec


@dataclass(frozen=True, kw_only=True)
class ODINConfig(DetectorConfig):
    """ODIN (Liang et al. 2018) as in scio: conformity = ``softmax(f(x~)/T)`` where
    ``x~ = x + epsilon * fgm_direction(d/dx max log_softmax(f(x)/T), fgm_norm)`` (no layers)."""

    temperature: float
    epsilon: float = 0.0
    fgm_norm: float = math.inf
    repr_fields = ("temperature", "epsilon", "fgm_norm")

    def __post_init__(self):
        super().__post_init__()
        self._set("temperature", _real(self.temperature, "ODIN temperature", lo=0, lo_open=True, finite=True))
        self._set("epsilon", _real(self.epsilon, "epsilon", finite=True))
        self._set("fgm_norm", _fgm_norm(self.fgm_norm))

    def conformity(self, state, net, xb):
        t, eps = self.temperature, self.epsilon
        out = net.forward(xb)[0]
        if not eps:
            return out, jax.nn.softmax(out / t, 1)
        g = jax.grad(lambda xx: jax.nn.log_softmax(net.forward(xx)[0] / t, 1).max(1).sum())(xb)
        adv = net.forward(xb + eps * fgm_direction(g, self.fgm_norm))[0]
        return out, jax.nn.softmax(adv / t, 1)


# ----------------------------------------------------------------------------- fit and score
@functools.partial(jax.jit, static_argnums=0)
def batch_features(detector: DetectorConfig, net: RecordedNet, xb: jax.Array):
    """The calibration pass's per-batch program: what ``detector`` records of ``xb [B, ...]``
    (a pytree of per-sample arrays ``[B, ...]``)."""
    return detector.features(net, xb)


@functools.partial(jax.jit, static_argnums=0)
def batch_conformity(detector: DetectorConfig, state, net: RecordedNet, xb: jax.Array):
    """The scoring pass's per-batch program: logits ``[B, C]`` and conformity ``[B, C]`` of ``xb``."""
    logits, conf = detector.conformity(state, net, xb)
    return logits, jnp.broadcast_to(conf[:, None] if conf.ndim == 1 else conf, logits.shape)


def _over_batches(fn, args: tuple, x: np.ndarray, batch_size: int, description: str, progress: bool):
    """``fn(*args, xb)`` over ``x`` in batches zero-padded to one shape; the outputs' valid rows,
    concatenated on the host (one batch on the device at a time)."""
    total = -(-len(x) // min(batch_size, len(x)))
    outs = []
    for k, (xb,) in track(padded_batches((x,), batch_size), description, total=total, quiet=not progress):
        outs.append(jax.tree.map(lambda a, k=k: np.asarray(a)[:k], fn(*args, xb)))
    return jax.tree.map(lambda *a: np.concatenate(a), *outs)


def _check_call(detector, net, x, batch_size, what: str) -> np.ndarray:
    """The checks shared by fit and score; ``x`` as a float32 host array."""
    if not isinstance(detector, DetectorConfig):
        raise TypeError(f"detector must be a DetectorConfig (e.g. KNNConfig(...)); "
                        f"got {type(detector).__name__}")
    if not isinstance(net, RecordedNet):
        raise TypeError(f"net must be a jaxuq.ood.RecordedNet; got {type(net).__name__}")
    missing = [s for s in detector.layers if s not in net.layers]
    if missing:
        raise ValueError(f"net does not record the layer(s) {missing} that {detector.name} reads; build it "
                         "with RecordedNet(module, variables, detector.layers)")
    _int(batch_size, "batch_size", 1)
    x = np.asarray(x, np.float32)
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"{what} must be a non-empty batch [N, ...]; got shape {x.shape}")
    check_finite(x, what)
    net.validate(x[:1])
    return x


def _check_labels(net: RecordedNet, x: np.ndarray, y) -> np.ndarray:
    """Calibration labels ``y`` [N]: integers in ``[0, C)`` for the net's C classes."""
    if np.shape(y) != (len(x),):
        raise ValueError(f"calibration labels y must have shape ({len(x)},); got {np.shape(y)}")
    c = net.eval_shape(x[:1])[0].shape[-1]
    _validate.check_labels(np.asarray(y), len(x), c, "y")
    return np.asarray(y).astype(np.int64)


def fit_detector(detector: DetectorConfig, net: RecordedNet, x, y=None, *, batch_size: int = 256,
                 progress: bool = True):
    """Fit ``detector`` on in-distribution inputs ``x [N, ...]`` (NHWC) and labels ``y [N]``.

    ``net`` must record ``detector.layers``. Detectors that record (Gram, KNN, Mahalanobis) run
    :func:`batch_features` over ``x`` in batches of ``batch_size`` (a progress bar unless
    ``progress=False``) and reduce the records on the host. Returns ``detector.state_type``:
    :class:`EmptyState`, :class:`GramState`, :class:`KNNState` or :class:`MahalanobisState`.
    """
    x = _check_call(detector, net, x, batch_size, "calibration data")
    y = None if y is None else _check_labels(net, x, y)
    detector.check_fit(net, len(x), y)
    if not detector.records:
        return detector.calibrate(None, y)
    records = _over_batches(batch_features, (detector, net), x, batch_size, f"{detector.name}: fit", progress)
    return detector.calibrate(records, y)


def score_detector(detector: DetectorConfig, state, net: RecordedNet, x, *, batch_size: int = 256,
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``[N, C]`` and conformity ``[N, C]`` (higher = more in-distribution) of ``x [N, ...]``,
    float32 on the host: :func:`batch_conformity` over batches of ``batch_size`` rows.

    ``state``: what :func:`fit_detector` returned for ``detector`` (any pytree of that type: restored
    from a checkpoint, sharded, ...); ``net`` must record ``detector.layers``.
    """
    if not isinstance(state, detector.state_type if isinstance(detector, DetectorConfig) else ()):
        want = detector.state_type.__name__ if isinstance(detector, DetectorConfig) else "a detector state"
        raise TypeError(f"state must be the {want} that fit_detector returned; got {type(state).__name__}")
    x = _check_call(detector, net, x, batch_size, "inputs")
    args = (detector, state, net)
    return _over_batches(batch_conformity, args, x, batch_size, f"{detector.name}: score", progress)


def confidence(logits, conformity) -> np.ndarray:
    """Conformity of the predicted class: ``conformity[i, argmax logits[i]]`` [N] (scio's
    ``compute_confidence``); ``-confidence`` is the OOD score (TU's sign)."""
    logits, conformity = np.asarray(logits), np.asarray(conformity)
    return conformity[np.arange(len(logits)), logits.argmax(1)]


# ----------------------------------------------------------------------------- scio-named wrappers
class Detector:
    """scio's mutable API over a :class:`DetectorConfig`: ``fit`` on in-distribution data (returns
    self), then ``conformity`` / ``confidence`` / ``ood_score``, with a :class:`ScoreTimer`.

    Args:
      layers: layer specs to record (see :class:`~jaxuq.ood.recorder.RecordedNet`).
      batch_size: samples per jitted batch for fitting and scoring (an attribute: may be changed).
      act_norm: if set, recorded activations are normalised per sample with this norm.
      quiet: no progress bars (bars are drawn on process 0 only).
      **settings: the detector's own settings (the fields of its ``config_type``).
    The settings read as attributes (``knn.k``) and are frozen; ``batch_size`` and ``quiet`` may be
    changed. Attributes after ``fit``: ``config``, ``net`` (the :class:`RecordedNet`), ``state``.
    """

    config_type: ClassVar[type[DetectorConfig]] = DetectorConfig

    def __init__(self, layers: Sequence[str] = (), *, batch_size: int = 256, act_norm: Any = "default",
                 quiet: bool = False, **settings):
        if act_norm != "default":
            settings["act_norm"] = act_norm
        self.config = self.config_type(layers=layers, **settings)
        self.batch_size = _int(batch_size, "batch_size", 1)
        self.quiet = bool(quiet)
        self.net: RecordedNet | None = None
        self.state = None
        self.fitted = False
        self.timer = ScoreTimer(repr(self))

    def __repr__(self) -> str:
        extra = ", ".join(f"{k}={getattr(self.config, k)!r}" for k in self.config.repr_fields)
        return f"{type(self).__name__}({extra})"

    def __getattr__(self, name: str):  # the settings read as before: knn.k, odin.temperature, .layers
        config = self.__dict__.get("config")
        if config is not None and name in config.__dataclass_fields__:
            return getattr(config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        config = self.__dict__.get("config")
        if config is not None and name in config.__dataclass_fields__:
            raise AttributeError(f"{type(self).__name__}.{name} is a frozen setting (of .config); "
                                 "build a new detector to change it")
        super().__setattr__(name, value)

    def fit(self, module: nn.Module, variables, x, y=None) -> Detector:
        """Calibrate on in-distribution inputs ``x`` [N, ...] (NHWC) and labels ``y`` [N]."""
        self.net = RecordedNet(module, variables, self.config.layers)
        self.fitted = False
        with self.timer("calibration", len(x)):
            self.state = fit_detector(self.config, self.net, x, y, batch_size=self.batch_size,
                                      progress=not self.quiet)
        self.fitted = True
        return self

    def conformity(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Logits [N, C] and conformity [N, C] (higher = more in-distribution)."""
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__} must be fitted before inference (call .fit)")
        with self.timer("inference", len(x)):
            return score_detector(self.config, self.state, self.net, x, batch_size=self.batch_size,
                                  progress=not self.quiet)

    def confidence(self, x) -> np.ndarray:
        """Conformity of the predicted class [N] (scio's ``compute_confidence``)."""
        return confidence(*self.conformity(x))

    def ood_score(self, x) -> np.ndarray:
        """``-confidence``: higher = more OOD (TU's convention)."""
        return -self.confidence(x)


class Softmax(Detector):
    """Conformity = softmax of the logits (MSP baseline); see :class:`SoftmaxConfig`."""

    config_type = SoftmaxConfig


class GradNorm(Detector):
    """GradNorm on the recorded layers' parameters; settings ``temperature=1.0, grad_norm=1.0``
    (see :class:`GradNormConfig`)."""

    config_type = GradNormConfig


class Gram(Detector):
    """Gram matrices; settings ``max_gram_order=8, cut_off=0.1, separate_diagonal=False,
    calib_labels="pred"`` (see :class:`GramConfig`)."""

    config_type = GramConfig


class KNN(Detector):
    """Deep k-NN; settings ``k`` (required), ``act_norm=2`` (see :class:`KNNConfig`)."""

    config_type = KNNConfig


class Mahalanobis(Detector):
    """Deep Mahalanobis (scio's ``DeepMahalanobis``); settings ``weights=None, epsilon=0.0,
    fgm_norm=inf`` (see :class:`MahalanobisConfig`)."""

    config_type = MahalanobisConfig


class ODIN(Detector):
    """ODIN; settings ``temperature`` (required), ``epsilon=0.0, fgm_norm=inf`` (see
    :class:`ODINConfig`)."""

    config_type = ODINConfig
