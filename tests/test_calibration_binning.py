"""Histogram binning, isotonic regression and BBQ vs torch-uncertainty 0.13.0 (and scikit-learn 1.6).

The scalers' algorithms are compared on TU's own probabilities (``torch.softmax`` of the logits, the
one op before the scaler): there the fitted edges / thresholds / frequencies and the calibrated
probabilities are bit-identical. Through jaxuq's softmax (``*_fit(logits)``) XLA's float32 softmax
differs from torch's by an ulp on ~20% of entries; what that does to each scaler is pinned below.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxuq import metrics as M
from jaxuq.calibration import bbq as Q
from jaxuq.calibration import binning as B
from jaxuq.calibration import isotonic as I
from jaxuq.calibration import reductions as R
from jaxuq.metrics.calibration import torch_linspace
from tests.helpers import data_path, require

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def real():
    """ResNet-20 CIFAR-10 logits (torch reference, first 1000 test images), seeded 500 : 500 split,
    with torch's softmax of both halves."""
    torch = require("torch")
    require("torch_uncertainty")
    ref = np.load(data_path("checkpoints/reference_logits_first1000.npz"))
    perm = np.random.default_rng(0).permutation(1000)
    z, y = ref["resnet20"].astype(np.float32), ref["labels"]
    cal, test = perm[:500], perm[500:]
    soft = lambda a: torch.softmax(torch.tensor(a), -1).numpy()  # noqa: E731
    return dict(z=z[cal], y=y[cal], zt=z[test], yt=y[test], p=soft(z[cal]), pt=soft(z[test]))


def _tu(cls, z, y, **kw):
    torch = require("torch")
    from torch.utils.data import DataLoader, TensorDataset

    logging.disable(logging.WARNING)
    s = cls(**kw)
    s.fit(DataLoader(TensorDataset(torch.tensor(z), torch.tensor(y)), batch_size=len(y)), progress=False)
    logging.disable(logging.NOTSET)
    return s


def _torch_log(p, eps=1e-6):
    torch = require("torch")
    return torch.log(torch.tensor(np.asarray(p)).clamp(eps, 1 - eps)).numpy()


def _ece_nll(out, y):
    p = jax.nn.softmax(jnp.asarray(out), -1)
    return float(M.ece(p, y)), float(M.nll(p, y))


# ----------------------------------------------------------------------------- torch/numpy float32 order
def test_torch_float32_helpers_are_bit_exact():
    torch = require("torch")
    for n in [*range(0, 300), 1001, 4097]:
        assert np.array_equal(torch_linspace(n).view(np.uint32), torch.linspace(0, 1, n).numpy().view(np.uint32)), n
    edges = torch_linspace(33, -1e-5, 1 + 1e-5)
    assert np.array_equal(edges, torch.linspace(-1e-5, 1 + 1e-5, 33).numpy())
    rng = np.random.default_rng(0)
    for t in range(30):
        n = int(rng.integers(2, 800))
        x = rng.beta(0.3, 0.3, n).astype(np.float32) if t % 2 else (1 - rng.exponential(1e-5, n)).astype(np.float32)
        q = torch_linspace(int(rng.integers(3, 17)))
        want = torch.quantile(torch.tensor(x), torch.tensor(q)).numpy()
        assert np.array_equal(R.torch_quantile(x, q), want), (n, q.size)
    for n in [*range(1, 40), 130, 512, 600, 5000]:
        x = (rng.normal(size=(3, n)) * 10 ** rng.uniform(-3, 4, (3, n))).astype(np.float32)
        assert np.array_equal(R.torch_sum(x), torch.tensor(x).sum(-1).numpy()), n
        assert np.array_equal(R.numpy_sum(x), x.sum(-1)), n
        if n in (3, 8, 10, 17, 33):  # the jitted forms unroll the order (small C, as for class rows)
            assert np.array_equal(np.asarray(jax.jit(R.torch_sum)(x)), torch.tensor(x).sum(-1).numpy()), n
            assert np.array_equal(np.asarray(jax.jit(R.numpy_sum)(x)), x.sum(-1)), n


def test_fma32_rounds_once():
    from fractions import Fraction

    rng = np.random.default_rng(1)
    a, b, c = (rng.normal(size=4000).astype(np.float32) * 10 ** rng.uniform(-6, 6, 4000).astype(np.float32)
               for _ in range(3))
    got = R.fma32(a, b, c)
    for i in range(0, 4000, 7):
        exact = Fraction(float(a[i])) * Fraction(float(b[i])) + Fraction(float(c[i]))
        near = [np.nextafter(got[i], np.float32(-np.inf)), got[i], np.nextafter(got[i], np.float32(np.inf))]
        errs = [abs(Fraction(float(v)) - exact) for v in near]
        assert errs[1] <= min(errs), i


# ----------------------------------------------------------------------------- histogram binning
@pytest.mark.realdata
@pytest.mark.parametrize("num_bins", [15, 7])
def test_histogram_binning_matches_tu(real, num_bins):
    from torch_uncertainty.post_processing import HistogramBinningScaler

    s = _tu(HistogramBinningScaler, real["z"], real["y"], num_bins=num_bins)
    for params in (B.histogram_binning_fit_probs(real["p"], real["y"], num_bins=num_bins),
                   B.histogram_binning_fit(real["z"], real["y"], num_bins=num_bins)):
        assert np.array_equal(np.asarray(params["bin_edges"]), s.bin_edges.numpy())
        assert np.array_equal(np.asarray(params["bin_values"]), s.bin_values.numpy())
    tu_out = s(require("torch").tensor(real["zt"])).numpy()
    ours = B.histogram_binning_apply_probs(params, real["pt"])
    assert np.array_equal(_torch_log(ours), tu_out)  # bit-identical up to the final log
    out = np.asarray(B.histogram_binning_apply(params, real["zt"]))
    assert np.abs(out - tu_out).max() <= 1e-6  # measured 4.8e-7: jnp.log vs torch.log (1 ulp)
    assert np.allclose(_ece_nll(out, real["yt"]), _ece_nll(tu_out, real["yt"]), atol=1e-6, rtol=0)


def test_histogram_binning_binary_matches_tu():
    torch = require("torch")
    from torch_uncertainty.post_processing import HistogramBinningScaler

    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    z = ((2 * y - 1) * 1.5 + rng.normal(size=400) * 2).astype(np.float32)
    for shape in [(400,), (400, 1)]:
        s = _tu(HistogramBinningScaler, z.reshape(shape), y, num_bins=10)
        p = B.histogram_binning_fit(z.reshape(shape), y, num_bins=10)
        assert p["bin_values"].shape == (10,)
        assert np.array_equal(np.asarray(p["bin_values"]), s.bin_values.numpy())
        out = np.asarray(B.histogram_binning_apply(p, z.reshape(shape)))
        assert out.shape == shape
        np.testing.assert_allclose(out, s(torch.tensor(z.reshape(shape))).numpy(), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- isotonic regression
@pytest.mark.realdata
def test_isotonic_matches_sklearn_and_tu_bit_for_bit(real):
    from torch_uncertainty.post_processing import IsotonicRegressionScaler

    s = _tu(IsotonicRegressionScaler, real["z"], real["y"])
    params = I.isotonic_fit_probs(real["p"], real["y"])
    for c, ir in enumerate(s.ir_models):
        k = int(params["size"][c])
        assert np.array_equal(np.asarray(params["x"][c, :k]), ir.X_thresholds_), c
        assert np.array_equal(np.asarray(params["y"][c, :k]), ir.y_thresholds_), c
        assert np.array_equal(np.asarray(I._interp(jnp.asarray(real["pt"][:, c]), params["x"][c],
                                                   params["y"][c], params["size"][c])), ir.predict(real["pt"][:, c]))
    ours = jax.jit(I.isotonic_apply_probs)(params, real["pt"])
    tu_out = s(require("torch").tensor(real["zt"])).numpy()
    assert np.array_equal(_torch_log(ours), tu_out)


@pytest.mark.realdata
def test_isotonic_through_jaxuq_softmax_is_pinned(real):
    """sklearn merges calibration points closer than float32's resolution 1e-6 to their group's first
    point (``_make_unique``), a discontinuous step. Two class-0 calibration probabilities are
    0.99917573 and 0.9991768 under torch's softmax (1.07e-6 apart: two groups); XLA's float32 softmax
    rounds one of them an ulp the other way (< 1e-6: one group), so the pooled fit moves: one threshold
    0.9991768 -> 0.9997254, its value 0.75 -> 0.769. Measured effect on the test half: median |out|
    gap 0, max 0.19 (log-probability), ECE 2.8e-3, NLL 1.3e-4. Given TU's probabilities the fit is
    bit-identical (test above); TU itself moves as much under any softmax that is not torch's."""
    from torch_uncertainty.post_processing import IsotonicRegressionScaler

    s = _tu(IsotonicRegressionScaler, real["z"], real["y"])
    tu_out = s(require("torch").tensor(real["zt"])).numpy()
    out = np.asarray(I.isotonic_apply(I.isotonic_fit(real["z"], real["y"]), real["zt"]))
    gap = np.abs(out - tu_out)
    assert np.median(gap) <= 1e-6 and gap.max() <= 0.25, (np.median(gap), gap.max())
    (e1, n1), (e2, n2) = _ece_nll(out, real["yt"]), _ece_nll(tu_out, real["yt"])
    assert abs(e1 - e2) <= 5e-3 and abs(n1 - n2) <= 1e-3, (e1, e2, n1, n2)


def test_isotonic_binary_and_small_cases_match_sklearn():
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(3)
    n = 200  # one shape for every case: one compilation
    cases = [
        (rng.uniform(size=n).astype(np.float32), rng.integers(0, 2, n)),
        (np.round(rng.uniform(size=n), 2).astype(np.float32), rng.integers(0, 2, n)),  # ties
        ((1 - rng.exponential(2e-6, n)).astype(np.float32), rng.integers(0, 2, n)),  # within 1e-6
        (np.full(n, 0.3, np.float32), rng.integers(0, 2, n)),  # one threshold
        (np.linspace(0, 1, n).astype(np.float32), np.ones(n, int)),  # single class present
    ]
    for p, y in cases:
        ir = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y.astype(np.float32))
        params = I.isotonic_fit_probs(p, y)
        assert params["x"].ndim == 1
        k = int(params["size"])
        assert np.array_equal(np.asarray(params["x"][:k]), ir.X_thresholds_)
        assert np.array_equal(np.asarray(params["y"][:k]), ir.y_thresholds_)
        t = np.concatenate([rng.uniform(-0.1, 1.1, 100), p]).astype(np.float32)
        assert np.array_equal(np.asarray(I.isotonic_apply_probs(params, np.clip(t, 0, 1))),
                              ir.predict(np.clip(t, 0, 1)))


# ----------------------------------------------------------------------------- BBQ
@pytest.mark.realdata
def test_bbq_matches_tu(real):
    torch = require("torch")
    from torch_uncertainty.post_processing import BBQScaler

    s = _tu(BBQScaler, real["z"], real["y"])
    params = Q.bbq_fit_probs(real["p"], real["y"])
    for c, (models, weights) in enumerate(s.bbq_models):
        assert int((np.asarray(params["weights"][c]) > 0).sum()) == len(models), c
        for j, m in enumerate(models):
            nb = int(params["num_bins"][c, j])
            assert np.array_equal(np.asarray(params["edges"][c, j, : nb + 1]), m["edges"].numpy())
            assert np.array_equal(np.asarray(params["freq"][c, j, :nb]), m["bin_pos_freq"].numpy())
        # measured 1.8e-7: SLEEF lgammaf / torch's exp vs float64 rounded to float32
        np.testing.assert_allclose(np.asarray(params["weights"][c, : len(models)]), weights.numpy(), atol=1e-6)
    tu_out = s(torch.tensor(real["zt"])).numpy()
    np.testing.assert_allclose(np.exp(_torch_log(Q.bbq_apply_probs(params, real["pt"]))), np.exp(tu_out),
                               atol=1e-6, rtol=0)  # measured 1.8e-7
    out = np.asarray(Q.bbq_apply(Q.bbq_fit(real["z"], real["y"]), real["zt"]))
    assert np.abs(out - tu_out).max() <= 1e-5  # through XLA's softmax; measured 9.5e-7
    assert np.allclose(_ece_nll(out, real["yt"]), _ece_nll(tu_out, real["yt"]), atol=1e-6, rtol=0)


def test_bbq_binary_and_pruning_match_tu():
    torch = require("torch")
    from torch_uncertainty.post_processing import BBQScaler

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 300)
    z = ((2 * y - 1) + rng.normal(size=300) * 2).astype(np.float32)
    for kw in [dict(), dict(max_bins=6, prior_weight=5.0, model_pruning=None), dict(model_pruning=0.05)]:
        s = _tu(BBQScaler, z, y, **kw)
        p = Q.bbq_fit(z, y, **kw)
        models, weights = s.bbq_models[0]
        assert p["weights"].ndim == 1 and int((np.asarray(p["weights"]) > 0).sum()) == len(models)
        np.testing.assert_allclose(np.asarray(p["weights"][: len(models)]), weights.numpy(), atol=1e-6)
        np.testing.assert_allclose(np.asarray(Q.bbq_apply(p, z)), s(torch.tensor(z)).numpy(), atol=1e-5)


def test_bbq_empty_bin_is_not_nan():
    """Deviation: TU's frequency of a bin without calibration samples is 0/0 = NaN, and every test
    probability landing there becomes NaN; jaxuq uses the bin's midpoint (its prior mean)."""
    torch = require("torch")
    from torch_uncertainty.post_processing import BBQScaler

    z = np.log(np.array([0.1, 0.2, 0.8, 0.9], np.float32) / (1 - np.array([0.1, 0.2, 0.8, 0.9], np.float32)))
    y = np.array([0, 0, 1, 1])
    s = _tu(BBQScaler, z, y, max_bins=8, model_pruning=None)
    test = np.float32([0.0])  # p = 0.5: between 0.2 and 0.8, where several schemes have empty bins
    assert np.isnan(s(torch.tensor(test)).numpy()).all()
    p = Q.bbq_fit(z, y, max_bins=8, model_pruning=None)
    out = np.asarray(Q.bbq_apply(p, test))
    assert np.isfinite(out).all()


# ----------------------------------------------------------------------------- boundary checks
@pytest.mark.parametrize("fit", [B.histogram_binning_fit, I.isotonic_fit, Q.bbq_fit])
def test_fits_validate_inputs(fit):
    rng = np.random.default_rng(5)
    z, y = rng.normal(size=(50, 4)).astype(np.float32), rng.integers(0, 4, 50)
    bad = z.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit(bad, y)
    with pytest.raises(ValueError, match="labels"):
        fit(z, y + 1)
    with pytest.raises(ValueError, match="labels"):
        fit(z, y.astype(np.float32))
    with pytest.raises(ValueError, match="labels"):
        fit(z, y[:-1])
    params = fit(z, y)
    apply = {B.histogram_binning_fit: B.histogram_binning_apply, I.isotonic_fit: I.isotonic_apply,
             Q.bbq_fit: Q.bbq_apply}[fit]
    with pytest.raises(ValueError, match="classes"):
        apply(params, z[:, :3])
    with pytest.raises(ValueError, match="eps"):
        apply(params, z, eps=float("nan"))
    with pytest.raises(TypeError, match="eps"):
        apply(params, z, eps="small")
    out = jax.jit(lambda a: apply(params, a))(z)  # jittable; XLA fuses multiply-adds (one rounding)
    np.testing.assert_allclose(np.asarray(out), np.asarray(apply(params, z)), atol=1e-5, rtol=0)


def test_settings_are_validated():
    rng = np.random.default_rng(6)
    z, y = rng.normal(size=(40, 3)).astype(np.float32), rng.integers(0, 3, 40)
    with pytest.raises(ValueError, match="num_bins"):
        B.histogram_binning_fit(z, y, num_bins=0)
    with pytest.raises(TypeError, match="num_bins"):
        B.histogram_binning_fit(z, y, num_bins=2.5)
    with pytest.raises(ValueError, match="max_bins"):
        Q.bbq_fit(z, y, max_bins=1)
    with pytest.raises(ValueError, match="prior_weight"):
        Q.bbq_fit(z, y, prior_weight=float("inf"))
    with pytest.raises(ValueError, match="model_pruning"):
        Q.bbq_fit(z, y, model_pruning=2.0)
    with pytest.raises(ValueError, match="model_pruning"):
        Q.bbq_fit(z, y, model_pruning=0.9)  # removes every scheme
    with pytest.raises(ValueError, match="probs"):
        B.histogram_binning_fit_probs(np.full((4,), 1.5, np.float32), np.array([0, 1, 0, 1]))
