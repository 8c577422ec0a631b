"""Last-layer Laplace approximation for classification, as TU 0.13.0's ``LaplaceApprox`` runs
laplace-torch 0.3 (``Laplace(model, "classification", subset_of_weights="last_layer",
hessian_structure=...)``, curvlinops' exact GGN, ``optimize_prior_precision(method="marglik")``,
``la(x, pred_type="glm", link_approx=..., n_samples=100)``).

The last layer is a Dense ``f = phi @ W + b`` (``W: [D, C]``, Flax layout; torch's ``[C, D]``) on the
penultimate features ``phi: [N, D]``. With ``p = softmax(f)`` and ``G_n = diag(p_n) - p_n p_n^T``
(the cross-entropy Hessian in the logits, so the GGN is exact for the last layer):

* ``"diag"``: ``H_W[d, c] = sum_n phi_nd^2 G_n[c, c]``, ``H_b[c] = sum_n G_n[c, c]``; posterior
  precision ``H + delta``.
* ``"kron"`` (KFAC, laplace-torch's default): ``H_W ~ B (x) A`` with ``B = sum_n G_n [C, C]`` (output
  side) and ``A = phi^T phi / N [D, D]`` (input side), ``H_b = B``; both factors eigendecomposed
  (eigenvalues clamped at 0), posterior precision ``l_B l_A^T + delta`` in that eigenbasis.
* prior ``N(0, 1/delta)`` with one scalar ``delta`` (laplace-torch's ``prior_structure="scalar"``):
  :func:`optimize_prior_precision` maximises the Laplace log marginal likelihood
  ``-loss - (log det P - P_params log delta + delta |theta|^2) / 2`` over ``log delta`` with Adam
  (lr 0.1, 100 steps from ``delta = 1``), ``loss`` the summed cross-entropy at the MAP.
* GLM predictive: ``f_var[n] = J_n P^{-1} J_n^T [C, C]`` with ``J_n = [I (x) phi_n, I]``; ``"probit"``:
  ``softmax(f / sqrt(1 + pi/8 diag f_var))``; ``"mc"``: the mean of ``softmax(f + chol(f_var) z_s)``
  over ``S`` standard normal columns ``z: [C, S]``, shared by the whole batch (as laplace-torch draws
  them, once per call). ``z`` is an argument, so the predictive can be checked against torch exactly.

Features come from :func:`last_layer_features` (the input of the Dense named ``layer``, recorded
with :class:`jaxuq.ood.RecordedNet`), so any jaxuq model works without changes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxuq._validate import check_int, check_labels, check_real
from jaxuq.ood.recorder import RecordedNet

__all__ = [
    "DiagCurvature",
    "KronCurvature",
    "LaplaceApprox",
    "LaplacePosterior",
    "functional_variance",
    "laplace_fit",
    "laplace_predict",
    "last_layer_features",
    "log_marginal_likelihood",
    "optimize_prior_precision",
]


class DiagCurvature(NamedTuple):
    """Diagonal GGN of the last layer: ``kernel [D, C]``, ``bias [C]`` (or None)."""

    kernel: jax.Array
    bias: jax.Array | None


class KronCurvature(NamedTuple):
    """KFAC of the last layer, eigendecomposed: output factor ``B = V_out diag(l_out) V_out^T [C, C]``
    (also the bias block), input factor ``A = V_in diag(l_in) V_in^T [D, D]``."""

    eig_out: jax.Array
    vec_out: jax.Array
    eig_in: jax.Array
    vec_in: jax.Array


class LaplacePosterior(NamedTuple):
    """A fitted last-layer Laplace approximation (a pytree: jit/vmap-able)."""

    kernel: jax.Array  # [D, C] MAP weights
    bias: jax.Array | None  # [C] MAP bias
    curvature: DiagCurvature | KronCurvature
    loss: jax.Array  # summed cross-entropy of the fit data at the MAP (= -log likelihood)
    prior_precision: jax.Array  # scalar delta


def _symeig(m):
    """laplace-torch's ``symeig``: eigh, eigenvalues clamped at 0."""
    vals, vecs = jnp.linalg.eigh(m)
    return jnp.maximum(vals, 0.0), vecs


def laplace_fit(features, labels, kernel, bias=None, *, logits=None, hessian_structure: str = "kron",
                prior_precision: float = 1.0) -> LaplacePosterior:
    """Curvature of the cross-entropy at the MAP last layer.

    Args:
      features: ``[N, D]`` inputs of the last layer on the fit data; labels: ``[N]`` ints.
      kernel, bias: the last Dense's ``[D, C]`` kernel and ``[C]`` bias (None: no bias).
      logits: ``[N, C]`` model outputs (default ``features @ kernel + bias``).
      hessian_structure: ``"kron"`` (KFAC) or ``"diag"``.
    """
    phi = jnp.asarray(features, jnp.float32)
    w = jnp.asarray(kernel, jnp.float32)
    if phi.ndim != 2 or w.ndim != 2 or phi.shape[1] != w.shape[0]:
        raise ValueError(f"`features` [N, D] and `kernel` [D, C] do not match: {phi.shape}, {w.shape}")
    b = None if bias is None else jnp.asarray(bias, jnp.float32)
    f = phi @ w + (0.0 if b is None else b) if logits is None else jnp.asarray(logits, jnp.float32)
    n, c = f.shape
    if n != phi.shape[0] or c != w.shape[1]:
        raise ValueError(f"`logits` {f.shape} do not match features {phi.shape} and kernel {w.shape}")
    y = check_labels(labels, n, c, "labels")
    if hessian_structure not in ("kron", "diag"):
        raise ValueError(f"`hessian_structure` must be 'kron' or 'diag', got {hessian_structure!r}")
    p = jax.nn.softmax(f, axis=-1)
    loss = -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(f, axis=-1), y[:, None], axis=1))
    if hessian_structure == "diag":
        g = p - p * p  # diag of G_n
        curv = DiagCurvature(jnp.einsum("nd,nc->dc", phi**2, g), None if b is None else jnp.sum(g, 0))
    else:
        out = jnp.einsum("nc,nk->ck", p, p)
        out = jnp.diag(jnp.sum(p, 0)) - out  # B = sum_n diag(p_n) - p_n p_n^T
        curv = KronCurvature(*_symeig(out), *_symeig(phi.T @ phi / n))
    delta = jnp.asarray(check_real(prior_precision, "prior_precision", low=0.0, low_open=True), jnp.float32)
    return LaplacePosterior(w, b, curv, loss, delta)


def _n_params(post: LaplacePosterior) -> int:
    return post.kernel.size + (0 if post.bias is None else post.bias.size)


def log_marginal_likelihood(post: LaplacePosterior, prior_precision=None) -> jax.Array:
    """Laplace log marginal likelihood (laplace-torch's ``log_marginal_likelihood``), scalar float32;
    differentiable in ``prior_precision`` (default: the posterior's)."""
    delta = post.prior_precision if prior_precision is None else jnp.asarray(prior_precision, jnp.float32)
    cv = post.curvature
    if isinstance(cv, DiagCurvature):
        logdet = jnp.sum(jnp.log(cv.kernel + delta))
        if cv.bias is not None:
            logdet = logdet + jnp.sum(jnp.log(cv.bias + delta))
    else:
        logdet = jnp.sum(jnp.log(jnp.outer(cv.eig_out, cv.eig_in) + delta))
        if post.bias is not None:
            logdet = logdet + jnp.sum(jnp.log(cv.eig_out + delta))
    sq = jnp.sum(post.kernel**2) + (0.0 if post.bias is None else jnp.sum(post.bias**2))
    logdet_prior = _n_params(post) * jnp.log(delta)
    return -post.loss - 0.5 * (logdet - logdet_prior + delta * sq)


def optimize_prior_precision(post: LaplacePosterior, n_steps: int = 100, lr: float = 0.1,
                             init_prior_prec: float = 1.0) -> LaplacePosterior:
    """laplace-torch's ``method="marglik"``: Adam on ``log delta`` (``n_steps``, ``lr``), from
    ``init_prior_prec``; returns the posterior with the optimised ``prior_precision``."""
    check_int(n_steps, "n_steps", minimum=0)
    check_real(lr, "lr", low=0.0, low_open=True)
    init = check_real(init_prior_prec, "init_prior_prec", low=0.0, low_open=True)
    return post._replace(prior_precision=_marglik_adam(post, n_steps, lr, jnp.float32(init)))


@jax.jit(static_argnums=(1, 2))
def _marglik_adam(post, n_steps, lr, init):
    opt = optax.adam(lr)
    neg = jax.grad(lambda lp: -log_marginal_likelihood(post, jnp.exp(lp)))

    def step(carry, _):
        lp, st = carry
        upd, st = opt.update(neg(lp), st)
        return (optax.apply_updates(lp, upd), st), None

    lp0 = jnp.log(init)
    (lp, _), _ = jax.lax.scan(step, (lp0, opt.init(lp0)), None, length=n_steps)
    return jnp.exp(lp)


def functional_variance(post: LaplacePosterior, features) -> jax.Array:
    """GLM predictive covariance of the logits, ``[N, C, C]``, for ``features [N, D]``."""
    phi = jnp.asarray(features, jnp.float32)
    delta, cv = post.prior_precision, post.curvature
    if isinstance(cv, DiagCurvature):
        var = jnp.einsum("nd,dc->nc", phi**2, 1.0 / (cv.kernel + delta))
        if cv.bias is not None:
            var = var + 1.0 / (cv.bias + delta)
        return jax.vmap(jnp.diag)(var)
    proj = (phi @ cv.vec_in) ** 2  # [N, D]: (V_in^T phi_n)^2
    s = proj @ (1.0 / (jnp.outer(cv.eig_out, cv.eig_in) + delta)).T  # [N, C] in the output eigenbasis
    if post.bias is not None:
        s = s + 1.0 / (cv.eig_out + delta)
    return jnp.einsum("ci,ni,ki->nck", cv.vec_out, s, cv.vec_out)


def laplace_predict(post: LaplacePosterior, features, logits=None, *, link_approx: str = "probit",
                    noise=None, key=None, n_samples: int = 100) -> jax.Array:
    """GLM predictive probabilities ``[N, C]`` float32 for ``features [N, D]`` (``logits [N, C]``: the
    model's outputs, default ``features @ kernel + bias``).

    ``link_approx="mc"`` needs ``noise [C, S]`` (standard normal; laplace-torch's draw) or ``key``
    (``S = n_samples`` columns drawn from it)."""
    phi = jnp.asarray(features, jnp.float32)
    f = phi @ post.kernel + (0.0 if post.bias is None else post.bias) if logits is None else (
        jnp.asarray(logits, jnp.float32))
    f_var = functional_variance(post, phi)
    if link_approx == "probit":
        kappa = 1.0 / jnp.sqrt(1.0 + math.pi / 8 * jnp.diagonal(f_var, axis1=1, axis2=2))
        return jax.nn.softmax(kappa * f, axis=-1)
    if link_approx != "mc":
        raise ValueError(f"`link_approx` must be 'probit' or 'mc', got {link_approx!r}")
    if noise is None:
        if key is None:
            raise ValueError("link_approx='mc' needs `noise` [C, S] or a `key`")
        s = check_int(n_samples, "n_samples", minimum=1)
        noise = jax.random.normal(key, (f.shape[1], s), jnp.float32)
    z = jnp.asarray(noise, jnp.float32)
    if z.ndim != 2 or z.shape[0] != f.shape[1]:
        raise ValueError(f"`noise` must be [C={f.shape[1]}, S], got {z.shape}")
    samples = f[:, :, None] + jnp.linalg.cholesky(f_var) @ z[None]  # [N, C, S]
    return jnp.mean(jax.nn.softmax(samples, axis=1), axis=2)


def last_layer_features(model, variables, x, layer: str = "fc3", batch_size: int = 1024):
    """``(features [N, D], logits [N, C])``: the input of the Dense ``layer`` and the model's eval-mode
    output for preprocessed inputs ``x [N, ...]``, in batches."""
    net = RecordedNet(model, variables, [f"{layer}:input"], example=np.asarray(x[:1]))
    feats, logits = [], []
    for i in range(0, len(x), check_int(batch_size, "batch_size", minimum=1)):
        out, acts = net(x[i:i + batch_size])
        feats.append(np.asarray(acts[f"{layer}:input"]))
        logits.append(np.asarray(out))
    return jnp.asarray(np.concatenate(feats)), jnp.asarray(np.concatenate(logits))


@dataclasses.dataclass(frozen=True)
class LaplaceApprox:
    """TU's ``LaplaceApprox(task="classification", weight_subset="last_layer", hessian_struct,
    pred_type="glm", link_approx, optimize_prior_precision)`` on a jaxuq model whose last layer is the
    Dense ``layer``: :meth:`fit` on preprocessed inputs and labels, then :meth:`predict`."""

    hessian_structure: str = "kron"
    link_approx: str = "probit"
    optimize_prior_precision: bool = True
    layer: str = "fc3"
    n_samples: int = 100

    def __post_init__(self):
        if self.hessian_structure not in ("kron", "diag"):
            raise ValueError(f"`hessian_structure` must be 'kron' or 'diag', got {self.hessian_structure!r}")
        if self.link_approx not in ("probit", "mc"):
            raise ValueError(f"`link_approx` must be 'probit' or 'mc', got {self.link_approx!r}")
        check_int(self.n_samples, "n_samples", minimum=1)

    def fit(self, model, variables, x, labels) -> LaplacePosterior:
        feats, logits = last_layer_features(model, variables, x, self.layer)
        last = variables["params"][self.layer]
        post = laplace_fit(feats, labels, last["kernel"], last.get("bias"), logits=logits,
                           hessian_structure=self.hessian_structure)
        return optimize_prior_precision(post) if self.optimize_prior_precision else post

    def predict(self, post: LaplacePosterior, model, variables, x, *, key=None, noise=None) -> jax.Array:
        """Predictive probabilities ``[N, C]`` (``"mc"``: one ``noise [C, S]`` or ``key`` per call)."""
        feats, logits = last_layer_features(model, variables, x, self.layer)
        return laplace_predict(post, feats, logits, link_approx=self.link_approx, noise=noise, key=key,
                               n_samples=self.n_samples)
