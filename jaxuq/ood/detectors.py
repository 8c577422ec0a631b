"""OOD detectors that fit on in-distribution data and read internal layers (scio's definitions).

Port of scio 1.1.0 (``scio.scores.classification``): ``Softmax``, ``GradNorm``, ``Gram``, ``KNN``,
``DeepMahalanobis`` (here ``Mahalanobis``) and ``ODIN``, for any Flax Linen model. Conventions are
scio's: a detector returns a *conformity* per sample and class (higher = more in-distribution);
``confidence(x)`` is the conformity of the predicted class (scio's ``compute_confidence``), and
``ood_score(x) = -confidence(x)`` follows TU's convention (higher = more OOD).

    det = KNN(k=15, layers=["avgpool"]).fit(model, variables, x_calib, y_calib)
    conf = det.confidence(x_test)                 # [N] numpy float32
    det.timer.report()                            # per-operation and per-sample timings

Everything runs over batches of ``batch_size`` through a jitted per-batch function and
accumulates on the host, so the device memory is bounded by one batch (plus, for KNN, the
reference features, which are the method's state). Activations are NHWC; Gram reads channels
from the last axis, like scio reads them from axis 1 in NCHW.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxuq._progress import track
from jaxuq.ood.recorder import RecordedNet, check_finite

__all__ = [
    "ScoreTimer",
    "Detector",
    "Softmax",
    "GradNorm",
    "Gram",
    "KNN",
    "Mahalanobis",
    "ODIN",
    "normalize_samples",
    "fgm_direction",
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


def _batches(n: int, bs: int):
    for i in range(0, n, bs):
        yield slice(i, min(i + bs, n))


# ----------------------------------------------------------------------------- base
class Detector:
    """Base class: ``fit`` on in-distribution data, then ``conformity`` / ``confidence``.

    Args:
      layers: layer specs to record (see :class:`~jaxuq.ood.recorder.RecordedNet`).
      batch_size: samples per jitted batch for fitting and scoring.
      act_norm: if set, recorded activations are normalised per sample with this norm.
      quiet: no progress bar while fitting (bars are drawn on process 0 only).
    """

    needs_layers = False
    default_act_norm: float | None = None

    def __init__(self, layers: Sequence[str] = (), *, batch_size: int = 256, act_norm="default",
                 quiet: bool = False):
        self.layers = tuple(layers)
        self.quiet = bool(quiet)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.act_norm = self.default_act_norm if act_norm == "default" else act_norm
        if self.act_norm is not None and (self.act_norm == 0 or math.isnan(self.act_norm)):
            raise ValueError(f"act_norm must be nonzero and not NaN; got {self.act_norm}")
        self.net: RecordedNet | None = None
        self.fitted = False
        self.timer = ScoreTimer(repr(self))

    def __repr__(self) -> str:
        extra = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({extra})"

    def _params(self) -> dict:
        return {}

    # -- API
    def fit(self, module: nn.Module, variables, x, y=None) -> Detector:
        """Calibrate on in-distribution inputs ``x`` [N, ...] (NHWC) and labels ``y`` [N]."""
        x = np.asarray(x, np.float32)
        if x.ndim < 2 or len(x) == 0:
            raise ValueError(f"calibration data must be a non-empty batch [N, ...]; got shape {x.shape}")
        check_finite(x, "calibration data")
        if y is not None:
            y = np.asarray(y)
            if y.shape != (len(x),):
                raise ValueError(f"calibration labels must have shape ({len(x)},); got {y.shape}")
        if self.needs_layers and not self.layers:
            raise ValueError(f"{type(self).__name__} needs at least one recorded layer (layers=[...])")
        self._check_params(len(x))
        self.net = RecordedNet(module, variables, self.layers, example=x[:1])
        self.fitted = False
        with self.timer("calibration", len(x)):
            self._calibrate(x, y)
        self.fitted = True
        return self

    def conformity(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Logits [N, C] and conformity [N, C] (higher = more in-distribution)."""
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__} must be fitted before inference (call .fit)")
        x = np.asarray(x, np.float32)
        check_finite(x, "inputs")
        with self.timer("inference", len(x)):
            outs, confs = [], []
            for sl in _batches(len(x), self.batch_size):
                o, c = self._conformity_batch(jnp.asarray(x[sl]))
                outs.append(np.asarray(o))
                confs.append(np.asarray(c))
            out, conf = np.concatenate(outs), np.concatenate(confs)
        if conf.ndim == 1:
            conf = np.broadcast_to(conf[:, None], out.shape)
        return out, conf

    def confidence(self, x) -> np.ndarray:
        """Conformity of the predicted class [N] (scio's ``compute_confidence``)."""
        out, conf = self.conformity(x)
        return conf[np.arange(len(out)), out.argmax(1)]

    def ood_score(self, x) -> np.ndarray:
        """``-confidence``: higher = more OOD (TU's convention)."""
        return -self.confidence(x)

    # -- to implement
    def _check_params(self, n_calib: int) -> None:
        pass

    def _calibrate(self, x, y) -> None:
        pass

    def _conformity_batch(self, xb):
        raise NotImplementedError

    # -- shared
    def _activations(self, acts: dict, concatenate: bool = False):
        vals = [acts[s] for s in self.layers]
        if concatenate:
            vals = [jnp.concatenate([v.reshape(v.shape[0], -1) for v in vals], axis=1)]
        return [normalize_samples(v, self.act_norm) for v in vals]

    def _record_all(self, x, fn):
        """Run ``fn(logits, acts)`` (jitted) over batches of ``x``; concatenate results on the host."""
        jfn = jax.jit(lambda xb: fn(*self.net._forward(self.net.variables, xb)))
        batches = track(_batches(len(x), self.batch_size), f"{type(self).__name__}: fit",
                        total=-(-len(x) // self.batch_size), quiet=self.quiet)
        res = [jax.tree.map(np.asarray, jfn(jnp.asarray(x[sl]))) for sl in batches]
        return jax.tree.map(lambda *a: np.concatenate(a), *res)


# ----------------------------------------------------------------------------- scores
class Softmax(Detector):
    """Conformity = softmax of the logits (MSP baseline)."""

    def _calibrate(self, x, y):
        fwd = self.net._forward
        self._f = jax.jit(lambda xb: (lambda o: (o, jax.nn.softmax(o, 1)))(fwd(self.net.variables, xb)[0]))

    def _conformity_batch(self, xb):
        return self._f(xb)


class GradNorm(Detector):
    """GradNorm: ``||d/dθ  -mean_c log_softmax(f(x)/T)_c||_p`` over the recorded layers' parameters.

    Per-sample gradients (``vmap(grad)``) w.r.t. the parameters of the recorded layers (scio:
    ``Recorder.recorded_params``), flattened and concatenated; ``p = grad_norm`` (1).
    """

    needs_layers = True

    def __init__(self, layers=(), *, temperature: float = 1.0, grad_norm: float = 1.0, **kw):
        self.temperature = float(temperature)
        self.grad_norm = float(grad_norm)
        super().__init__(layers, **kw)

    def _params(self):
        return {"temperature": self.temperature, "grad_norm": self.grad_norm}

    def _check_params(self, n_calib):
        if not self.temperature > 0:
            raise ValueError(f"GradNorm temperature must be > 0; got {self.temperature}")

    def _calibrate(self, x, y):
        net = self.net
        names = [n.partition(":")[0] for n in self.layers]
        sub = {n: net.recorded_params()[n] for n in names}
        if not jax.tree.leaves(sub):
            raise RuntimeError("Recorded layers must have at least one learnable parameter for GradNorm")
        module, variables, t, p = net.module, net.variables, self.temperature, self.grad_norm

        def one(sub, x1):
            params = variables["params"]
            for n, v in sub.items():
                params = _replace(params, n.split("."), v)
            logits = module.apply({**variables, "params": params}, x1[None])[0]
            return -jax.nn.log_softmax(logits / t).mean(), logits

        def batch(xb):
            g, logits = jax.vmap(jax.grad(one, has_aux=True), in_axes=(None, 0))(sub, xb)
            flat = jnp.concatenate([a.reshape(a.shape[0], -1) for a in jax.tree.leaves(g)], 1)
            if p == math.inf:
                norm = jnp.abs(flat).max(1)
            else:
                norm = (jnp.abs(flat) ** p).sum(1) ** (1.0 / p)
            return logits, norm

        self._f = jax.jit(batch)

    def _conformity_batch(self, xb):
        return self._f(xb)


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


class Gram(Detector):
    """Gram matrices (Sastry & Oore 2020) as in scio: per-layer row sums of ``|F^p F^pT|^(1/p)``,
    per-class ``(cut_off, 1 - cut_off)`` quantiles on calibration data (labels = predictions by
    default), deviations normalised by the expected calibration deviation, summed over layers."""

    needs_layers = True

    def __init__(self, layers=(), *, max_gram_order: int = 8, cut_off: float = 0.1,
                 separate_diagonal: bool = False, calib_labels: str = "pred", **kw):
        self.max_gram_order = int(max_gram_order)
        self.cut_off = float(cut_off)
        self.separate_diagonal = bool(separate_diagonal)
        self.calib_labels = calib_labels
        super().__init__(layers, **kw)

    def _params(self):
        return {"calib_labels": self.calib_labels, "cut_off": self.cut_off,
                "max_gram_order": self.max_gram_order}

    def _check_params(self, n_calib):
        if not 0 < self.cut_off < 0.5:
            raise ValueError(f"Gram cut_off must lie in (0, 0.5); got {self.cut_off}")
        if self.calib_labels not in ("pred", "true"):
            raise ValueError(f"calib_labels must be 'pred' or 'true'; got {self.calib_labels!r}")

    def _stats(self, logits, acts):
        return logits, [_gram_stats(a, self.max_gram_order, self.separate_diagonal)
                        for a in self._activations(acts)]

    def _calibrate(self, x, y):
        if self.calib_labels == "true" and y is None:
            raise ValueError("Gram(calib_labels='true') needs calibration labels")
        logits, stats = self._record_all(x, self._stats)
        n, c = logits.shape
        labels = logits.argmax(1) if self.calib_labels == "pred" else np.asarray(y)
        self.low_high, self.expected = [], []
        q = np.array([self.cut_off, 1 - self.cut_off], np.float32)
        for st in stats:
            lh = np.empty((c, 2, st.shape[1]), np.float32)
            lh[:, 0], lh[:, 1] = np.inf, -np.inf
            total = np.float32(0.0)
            for k in range(c):
                cs = st[labels == k]
                if len(cs):
                    with np.errstate(all="ignore"):
                        lh[k] = np.nanquantile(cs.astype(np.float64), q, axis=0).astype(np.float32)
                    with np.errstate(all="ignore"):
                        dev = np.asarray(_gram_deviation(lh[k, 0][None], lh[k, 1][None], jnp.asarray(cs)))
                    total = total + np.float32(dev.sum())
            self.low_high.append(jnp.asarray(lh))
            self.expected.append(np.float32(total / n))

        def batch(xb):
            logits, stats = self._stats(*self.net._forward(self.net.variables, xb))
            tot = jnp.zeros(logits.shape, jnp.float32)
            for st, lh, e in zip(stats, self.low_high, self.expected):
                tot = tot + _gram_deviation(lh[:, 0], lh[:, 1], st) / e
            return logits, -jnp.where(jnp.isnan(tot), jnp.inf, tot)

        self._f = jax.jit(batch)

    def _conformity_batch(self, xb):
        return self._f(xb)


class KNN(Detector):
    """Deep k-NN (Sun et al. 2022) as in scio: conformity = minus the **squared** L2 distance to the
    k-th nearest calibration feature, features L2-normalised (``act_norm=2``) and concatenated over
    the recorded layers. Exact search, in batches of queries against all references."""

    needs_layers = True
    default_act_norm = 2.0

    def __init__(self, layers=(), *, k: int, **kw):
        self.k = int(k)
        super().__init__(layers, **kw)

    def _params(self):
        return {"k": self.k, "act_norm": self.act_norm}

    def _check_params(self, n_calib):
        if not 0 < self.k <= n_calib:
            raise ValueError(
                f"KNN needs 0 < k <= number of calibration samples; got k={self.k} with {n_calib} "
                f"calibration samples (use more calibration data or a smaller k)"
            )

    def _calibrate(self, x, y):
        feats = self._record_all(x, lambda o, a: self._activations(a, concatenate=True)[0])
        self.index = jnp.asarray(feats)
        self._ref_sq = jnp.sum(self.index**2, 1)
        k = self.k

        def batch(xb):
            logits, acts = self.net._forward(self.net.variables, xb)
            q = self._activations(acts, concatenate=True)[0]
            d2 = (jnp.sum(q**2, 1)[:, None] + self._ref_sq[None]
                  - 2 * jnp.dot(q, self.index.T, precision=jax.lax.Precision.HIGHEST))
            d2 = jnp.maximum(d2, 0.0)
            kth = -jax.lax.top_k(-d2, k)[0][:, -1]
            return logits, -kth

        self._f = jax.jit(batch)

    def _conformity_batch(self, xb):
        return self._f(xb)


class Mahalanobis(Detector):
    """Deep Mahalanobis (Lee et al. 2018) as scio's ``DeepMahalanobis`` (``epsilon=0``): per-class
    means (true labels) and a shared precision (inverse unbiased covariance of the residues) per
    layer; conformity per class = ``-sum_l w_l D2_l`` (NaN -> -inf). ``epsilon > 0`` adds scio's
    input perturbation towards the closest class (FGM with ``fgm_norm``)."""

    needs_layers = True

    def __init__(self, layers=(), *, weights: Sequence[float] | None = None, epsilon: float = 0.0,
                 fgm_norm: float = math.inf, **kw):
        self.weights = None if weights is None else tuple(float(w) for w in weights)
        self.epsilon = float(epsilon)
        self.fgm_norm = float(fgm_norm)
        super().__init__(layers, **kw)

    def _params(self):
        return {"epsilon": self.epsilon, "fgm_norm": self.fgm_norm, "weights": self.weights}

    def _check_params(self, n_calib):
        if self.fgm_norm < 1:
            raise ValueError(f"fgm_norm must be >= 1; got {self.fgm_norm}")
        if self.weights is not None and len(self.weights) != len(self.layers):
            raise ValueError(f"weights has {len(self.weights)} entries for {len(self.layers)} layers")
        if n_calib < 2:
            raise ValueError("Mahalanobis needs at least 2 calibration samples for a covariance")

    def _calibrate(self, x, y):
        if y is None:
            raise ValueError("Mahalanobis needs calibration labels")
        logits, feats = self._record_all(
            x, lambda o, a: (o, [v.reshape(v.shape[0], -1) for v in self._activations(a)]))
        c = logits.shape[1]
        self.mu, self.precision = [], []
        for f in feats:
            f64 = f.astype(np.float64)
            mu = np.stack([f64[y == k].mean(0) if np.any(y == k) else np.full(f.shape[1], np.nan)
                           for k in range(c)])
            res = f64 - mu[y]
            cov = np.cov(res.T)  # unbiased, like torch.Tensor.cov
            try:
                prec = np.linalg.inv(np.atleast_2d(cov))
                if not np.all(np.isfinite(prec)):
                    raise np.linalg.LinAlgError
            except np.linalg.LinAlgError:
                prec = np.full((f.shape[1], f.shape[1]), np.nan)
            self.mu.append(jnp.asarray(mu, jnp.float32))
            self.precision.append(jnp.asarray(prec, jnp.float32))
        w = jnp.asarray(self.weights if self.weights is not None else [1.0] * len(self.layers), jnp.float32)

        def d2_all(acts):
            out = []
            for v, mu, prec in zip(self._activations(acts), self.mu, self.precision):
                r = v.reshape(v.shape[0], 1, -1) - mu[None]
                out.append(jnp.einsum("ncd,de,nce->nc", r, prec, r, precision=jax.lax.Precision.HIGHEST))
            return out

        def batch(xb):
            logits, acts = self.net._forward(self.net.variables, xb)
            d2s = d2_all(acts)
            if self.epsilon:
                adv = []
                for layer in range(len(d2s)):
                    cand = jnp.argmin(jnp.where(jnp.isnan(d2s[layer]), jnp.inf, d2s[layer]), 1)

                    def neg_d2(xx, layer=layer, cand=cand):
                        _, a = self.net._forward(self.net.variables, xx)
                        d = d2_all(a)[layer]
                        return -jnp.take_along_axis(d, cand[:, None], 1).sum()

                    g = jax.grad(neg_d2)(xb)
                    xa = xb + self.epsilon * fgm_direction(g, self.fgm_norm)
                    adv.append(d2_all(self.net._forward(self.net.variables, xa)[1])[layer])
                d2s = adv
            d2 = jnp.stack(d2s, -1) @ w
            return logits, -jnp.where(jnp.isnan(d2), jnp.inf, d2)

        self._f = jax.jit(batch)

    def _conformity_batch(self, xb):
        return self._f(xb)


class ODIN(Detector):
    """ODIN (Liang et al. 2018) as in scio: conformity = ``softmax(f(x~)/T)`` where
    ``x~ = x + epsilon * fgm_direction(d/dx max log_softmax(f(x)/T), fgm_norm)`` (no layers)."""

    def __init__(self, layers=(), *, temperature: float, epsilon: float = 0.0, fgm_norm: float = math.inf,
                 **kw):
        self.temperature = float(temperature)
        self.epsilon = float(epsilon)
        self.fgm_norm = float(fgm_norm)
        super().__init__(layers, **kw)

    def _params(self):
        return {"temperature": self.temperature, "epsilon": self.epsilon, "fgm_norm": self.fgm_norm}

    def _check_params(self, n_calib):
        if not self.temperature > 0:
            raise ValueError(f"ODIN temperature must be > 0; got {self.temperature}")
        if self.fgm_norm < 1:
            raise ValueError(f"fgm_norm must be >= 1; got {self.fgm_norm}")

    def _calibrate(self, x, y):
        t, eps, p = self.temperature, self.epsilon, self.fgm_norm
        apply = lambda xx: self.net.module.apply(self.net.variables, xx)

        def batch(xb):
            out = apply(xb)
            if not eps:
                return out, jax.nn.softmax(out / t, 1)
            g = jax.grad(lambda xx: jax.nn.log_softmax(apply(xx) / t, 1).max(1).sum())(xb)
            adv = apply(xb + eps * fgm_direction(g, p))
            return out, jax.nn.softmax(adv / t, 1)

        self._f = jax.jit(batch)

    def _conformity_batch(self, xb):
        return self._f(xb)
