"""Calibration input validation and T > 0 (issue 16, section 2). Each test fails on the code before the fix."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxuq.calibration import conformal as C
from jaxuq.calibration import scaling as S


def _data(n=400, c=5, seed=0, shift=3.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    z = rng.normal(size=(n, c)).astype(np.float32)
    z[np.arange(n), y] += shift
    return z, y


# ----------------------------------------------------------------------------------------- T > 0
@pytest.mark.parametrize("method", ["tu", "exact"])
@pytest.mark.parametrize("fit", [S.temperature_fit, S.vector_fit])
def test_worse_than_chance_logits_keep_a_positive_temperature(method, fit):
    z, y = _data(shift=-3.0)  # the true class has the LOWEST logit
    with pytest.warns(RuntimeWarning, match="worse than chance"):
        p = fit(z, y, method=method)
    assert bool(jnp.all(p["inv_temperature"] > 0)) and bool(jnp.all(p["temperature"] > 0))
    if fit is S.temperature_fit:  # a positive T keeps the ranking instead of reversing every prediction
        assert np.array_equal(np.asarray(S.temperature_apply(p, z)).argmax(-1), z.argmax(-1))
    # and it is the best positive temperature, not worse than T = 1
    assert float(S.cross_entropy(S.temperature_apply(p, z), jnp.asarray(y))) <= \
        float(S.cross_entropy(jnp.asarray(z), jnp.asarray(y))) + 1e-6


def test_normal_logits_do_not_warn():
    z, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert float(S.temperature_fit(z, y)["temperature"][0]) > 0


# ----------------------------------------------------------------------------------------- labels
def _fits():
    from jaxuq.calibration.deup import deup_errors

    return [S.temperature_fit, S.vector_fit, S.matrix_fit,
            lambda z, y: C.conformal_fit(z, y, method="raps", key=jax.random.key(0)),
            lambda z, y: C.conformal_fit(z, y, method="thr"), deup_errors]


@pytest.mark.parametrize("i", range(6))
def test_int64_labels_beyond_int32_are_refused(i):
    z, y = _data()
    y = y.astype(np.int64)
    y[3] = 2**32 + 1  # wraps to 1 (a valid class) in int32
    with pytest.raises(ValueError, match="must lie in"):
        _fits()[i](z, y)


@pytest.mark.parametrize("i", range(6))
def test_float_labels_are_refused(i):
    z, y = _data()
    yf = y.astype(np.float32)
    yf[0] = 1.7  # truncated to 1 by a cast
    with pytest.raises(ValueError, match="integer class indices"):
        _fits()[i](z, yf)


# ----------------------------------------------------------------------------------------- applies
def test_apply_functions_validate_logits():
    z, y = _data()
    t, v, m = S.temperature_fit(z, y), S.vector_fit(z, y, max_iter=5), S.matrix_fit(z, y, max_iter=5)
    bad = z.copy()
    bad[0, 0] = np.nan
    for f, p in ((S.temperature_apply, t), (S.vector_apply, v), (S.matrix_apply, m)):
        with pytest.raises(ValueError, match="NaN or inf"):
            f(p, bad)
    for f, p in ((S.vector_apply, v), (S.matrix_apply, m)):
        with pytest.raises(ValueError, match="4 classes"):
            f(p, z[:, :4])
    # still usable under jit (shape checks only) and on [M, N, C]
    assert jax.jit(S.temperature_apply)(t, z).shape == z.shape
    assert S.vector_apply(v, np.stack([z, z])).shape == (2, *z.shape)


@pytest.mark.parametrize("method", ["thr", "aps"])
def test_conformal_predict_validates_logits(method):
    z, y = _data()
    p = C.conformal_fit(z, y, method=method, key=jax.random.key(0))
    bad = z[:4].copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        C.conformal_predict(p, bad, key=jax.random.key(1))
    with pytest.raises(ValueError, match="3 classes"):
        C.conformal_predict(p, z[:4, :3], key=jax.random.key(1))
    with pytest.raises(ValueError, match="2-D"):
        C.conformal_predict(p, z[0], key=jax.random.key(1))
    assert C.conformal_predict(p, z[:4], key=jax.random.key(1)).shape == (4, 5)
