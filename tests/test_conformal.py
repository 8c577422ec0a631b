"""Conformal sets (THR, APS, RAPS): TU 0.13.0 parity and the finite-sample coverage guarantee."""

import logging

import jax
import numpy as np
import pytest

from jaxuq.calibration import conformal as CF
from tests.helpers import require


def _data(n, c=10, seed=0, scale=2.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    z = rng.normal(size=(n, c)).astype(np.float32) * 2
    z[np.arange(n), y] += 2.5
    return (z * scale).astype(np.float32), y


@pytest.mark.parity
@pytest.mark.parametrize("method", ["thr", "aps", "raps"])
def test_sets_and_metrics_match_tu(method):
    torch = require("torch")
    require("torch_uncertainty")
    from torch.utils.data import DataLoader, TensorDataset
    from torch_uncertainty.metrics.classification import CoverageRate, SetSize
    from torch_uncertainty.post_processing import ConformalClsAPS, ConformalClsRAPS, ConformalClsTHR

    zc, yc = _data(600, seed=1)
    zt, yt = _data(400, seed=2)
    cls = {"thr": ConformalClsTHR, "aps": ConformalClsAPS, "raps": ConformalClsRAPS}[method]
    tu = cls(alpha=0.1, model=torch.nn.Identity(), device="cpu")
    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(torch.tensor(zc), torch.tensor(yc)), batch_size=len(yc))
    tu.fit(loader)
    logging.disable(logging.NOTSET)
    if method != "thr":  # reproduce torch's draws: one torch.rand(N) in fit, torch.rand(N, C) in predict
        torch.manual_seed(0)
        # each pass over a DataLoader draws its base seed from torch's RNG: TS fit (APS) + APS fit
        for _ in range(2 if method == "aps" else 1):
            iter(loader)
        u_fit = torch.rand(len(yc)).numpy()
    torch.manual_seed(1)
    out_tu = tu(torch.tensor(zt)).numpy()
    torch.manual_seed(1)
    u_pred = torch.rand(zt.shape).numpy()

    kw = {} if method == "thr" else {"noise": u_fit}
    params = CF.conformal_fit(zc, yc, method=method, alpha=0.1, **kw)
    # end to end, our own TS: the temperature agrees to 1e-3 relative, so q_hat to ~1e-4
    assert abs(float(params["q_hat"]) - tu.quantile.item()) < 1e-3
    if params["temperature"] is not None:
        t_tu = tu.temperature
        assert abs(float(params["temperature"]["temperature"][0]) - t_tu) / t_tu < 1e-3
        # exact comparison of the conformal part: use TU's fitted temperature
        inv = np.float32(tu.model.inv_temp.detach().numpy())
        params["temperature"] = {"inv_temperature": inv, "temperature": 1 / inv}
        probs = jax.nn.softmax(CF.temperature_apply(params["temperature"], zc), -1)
        if method == "thr":
            params["q_hat"] = CF.thr_quantile(probs, yc, 0.1)
        else:
            params["q_hat"] = CF.aps_quantile(probs, yc, 0.1, noise=u_fit, penalty=params["penalty"])
    assert abs(float(params["q_hat"]) - tu.quantile.item()) < 1e-6
    ours = np.asarray(CF.conformal_predict(params, zt, normalize=True, **({} if method == "thr" else {"noise": u_pred})))
    np.testing.assert_allclose(ours, out_tu, atol=1e-6)
    cov, size = CoverageRate(), SetSize()
    cov.update(torch.tensor(out_tu), torch.tensor(yt))
    size.update(torch.tensor(out_tu))
    assert abs(float(CF.coverage_rate(ours, yt)) - cov.compute().item()) < 1e-6
    assert abs(float(CF.set_size(ours)) - size.compute().item()) < 1e-6
    macro = CoverageRate(num_classes=10, average="macro")
    macro.update(torch.tensor(out_tu), torch.tensor(yt))
    assert abs(float(CF.coverage_rate(ours, yt, average="macro")) - macro.compute().item()) < 1e-6


@pytest.mark.parity
def test_quantile_matches_torch_quantile():
    torch = require("torch")
    rng = np.random.default_rng(3)
    for n in [1, 2, 7, 100, 1001]:
        s = rng.uniform(size=n).astype(np.float32)
        for alpha in [0.05, 0.1, 0.33]:
            ref = torch.quantile(torch.tensor(s), 1 - alpha).item()
            assert abs(float(CF.conformal_quantile(s, alpha)) - ref) < 1e-6


@pytest.mark.parametrize("method", ["thr", "aps", "raps"])
def test_finite_sample_coverage_guarantee(method):
    """With the corrected quantile, empirical coverage >= 1 - alpha - slack over several seeds.

    The slack is 3 binomial standard errors of the test-set coverage (n_test = 2000).
    """
    alpha, n_cal, n_test = 0.1, 500, 2000
    slack = 3 * np.sqrt(alpha * (1 - alpha) / n_test)
    covs = []
    for seed in range(5):
        z, y = _data(n_cal + n_test, seed=10 + seed, scale=1.0)
        key = jax.random.key(seed)
        k1, k2 = jax.random.split(key)
        p = CF.conformal_fit(z[:n_cal], y[:n_cal], method=method, alpha=alpha, correction="finite_sample", key=k1)
        sets = CF.conformal_predict(p, z[n_cal:], key=k2)
        cov = float(CF.coverage_rate(sets, y[n_cal:]))
        covs.append(cov)
        assert cov >= 1 - alpha - slack, (seed, cov)
    assert np.mean(covs) >= 1 - alpha - slack / np.sqrt(5)
    # the corrected quantile is never below TU's
    z, y = _data(n_cal, seed=99)
    q_tu = CF.conformal_fit(z, y, method="thr", alpha=alpha)["q_hat"]
    q_fs = CF.conformal_fit(z, y, method="thr", alpha=alpha, correction="finite_sample")["q_hat"]
    assert float(q_fs) >= float(q_tu)


def test_conformal_bad_input():
    z, y = _data(50)
    with pytest.raises(ValueError, match="alpha"):
        CF.conformal_fit(z, y, alpha=1.5)
    with pytest.raises(ValueError, match="method"):
        CF.conformal_fit(z, y, method="lac2")
    with pytest.raises(ValueError, match="key"):
        CF.conformal_fit(z, y, method="aps")
    with pytest.raises(ValueError, match="penalty"):
        CF.conformal_fit(z, y, method="raps", penalty=-1.0, key=jax.random.key(0))
    # tiny calibration sets: the corrected quantile is +inf -> full sets
    q = CF.conformal_quantile(np.array([0.1, 0.2], np.float32), 0.1, "finite_sample")
    assert np.isinf(float(q))
