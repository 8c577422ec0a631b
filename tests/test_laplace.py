"""jaxuq.calibration.laplace without torch: the structured GLM covariance equals the dense
``J P^{-1} J^T`` (float64 numpy), the marginal-likelihood optimum, jit, and bad input."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from jaxuq.calibration.laplace import (
    DiagCurvature,
    functional_variance,
    laplace_fit,
    laplace_predict,
    log_marginal_likelihood,
    optimize_prior_precision,
)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    n, d, c = 40, 6, 4
    phi = np.maximum(rng.standard_normal((n, d)), 0).astype(np.float32)
    w = rng.standard_normal((d, c)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    y = rng.integers(0, c, n)
    return phi, w, b, y


def _dense_precision(post, phi, hs):
    """The posterior precision as a dense float64 matrix over [kernel.flatten() (d*C + c), bias]."""
    delta = float(post.prior_precision)
    cv = post.curvature
    if hs == "diag":
        h = np.concatenate([np.asarray(cv.kernel, np.float64).ravel(), np.asarray(cv.bias, np.float64)])
        return np.diag(h + delta)
    big = lambda e, v: (np.asarray(v, np.float64) * np.asarray(e, np.float64)) @ np.asarray(v, np.float64).T  # noqa: E731
    a, bb = big(cv.eig_in, cv.vec_in), big(cv.eig_out, cv.vec_out)
    pw, c = np.kron(a, bb), bb.shape[0]
    out = np.zeros((pw.shape[0] + c,) * 2)
    out[:-c, :-c], out[-c:, -c:] = pw, bb
    return out + delta * np.eye(out.shape[0])


@pytest.mark.parametrize("hs", ["diag", "kron"])
def test_functional_variance_is_the_dense_glm_covariance(problem, hs):
    phi, w, b, y = problem
    post = laplace_fit(phi, y, w, b, hessian_structure=hs, prior_precision=0.7)
    c = w.shape[1]
    cov = np.linalg.inv(_dense_precision(post, phi, hs))
    jac = np.stack([np.concatenate([np.kron(p, np.eye(c)), np.eye(c)], 1) for p in phi.astype(np.float64)])
    want = np.einsum("ncp,pq,nkq->nck", jac, cov, jac)
    got = np.asarray(functional_variance(post, phi))
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
    if hs == "diag":  # the GGN diagonal itself
        p = np.exp(phi @ w + b) / np.exp(phi @ w + b).sum(1, keepdims=True)
        np.testing.assert_allclose(post.curvature.kernel, (phi**2).T @ (p - p**2), rtol=1e-5)


@pytest.mark.parametrize("hs", ["diag", "kron"])
def test_prior_precision_maximises_the_marginal_likelihood(problem, hs):
    phi, w, b, y = problem
    post = optimize_prior_precision(laplace_fit(phi, y, w, b, hessian_structure=hs), n_steps=300)
    d = float(post.prior_precision)
    ml = lambda v: float(log_marginal_likelihood(post, v))  # noqa: E731
    assert ml(d) >= max(ml(d * 1.2), ml(d / 1.2), ml(1.0))


def test_predict_jits_and_mc_approaches_the_probit_regime(problem):
    phi, w, b, y = problem
    post = laplace_fit(phi, y, w, b, hessian_structure="kron", prior_precision=50.0)
    probit = jax.jit(functools.partial(laplace_predict, link_approx="probit"))(post, phi)
    mc = laplace_predict(post, phi, link_approx="mc", key=jax.random.key(0), n_samples=4000)
    np.testing.assert_allclose(np.asarray(probit).sum(1), 1.0, atol=1e-5)
    assert np.max(np.abs(np.asarray(mc) - np.asarray(probit))) < 0.03  # small posterior variance


@pytest.mark.parametrize("call,err,match", [
    (lambda p: laplace_fit(*p, hessian_structure="full"), ValueError, "hessian_structure"),
    (lambda p: laplace_fit(p[0], p[1], p[2].T, p[3]), ValueError, "kernel"),
    (lambda p: laplace_fit(p[0], p[1] + 7, p[2], p[3]), ValueError, "labels"),
    (lambda p: laplace_fit(*p, prior_precision=0.0), ValueError, "prior_precision"),
    (lambda p: laplace_predict(laplace_fit(*p), p[0], link_approx="mc"), ValueError, "noise"),
    (lambda p: laplace_predict(laplace_fit(*p), p[0], link_approx="mc", noise=np.zeros((3, 5))), ValueError,
     "noise"),
    (lambda p: laplace_predict(laplace_fit(*p), p[0], link_approx="bridge"), ValueError, "link_approx"),
    (lambda p: optimize_prior_precision(laplace_fit(*p), lr=float("nan")), ValueError, "lr"),
    (lambda p: optimize_prior_precision(laplace_fit(*p), n_steps=1.5), TypeError, "n_steps"),
])
def test_bad_input(problem, call, err, match):
    phi, w, b, y = problem
    with pytest.raises(err, match=match):
        call((phi, y, w, b))


def test_no_bias(problem):
    phi, w, _, y = problem
    post = laplace_fit(phi, y, w, None, hessian_structure="diag")
    assert isinstance(post.curvature, DiagCurvature) and post.curvature.bias is None
    assert np.asarray(laplace_predict(post, phi)).shape == (len(phi), w.shape[1])
