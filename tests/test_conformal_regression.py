"""Conformal regression (``jaxuq.calibration.conformal_regression``) against TU 0.13.0's ``ConformalRegCQR``:
q_hat and the intervals bit for bit on fixed quantile predictions (a lookup model, several alphas, sizes and
batchings); split conformal is CQR on zero-width intervals ``[f(x), f(x)]`` (its scores are ``|y - f(x)|``),
so it is checked against TU the same way; coverage through TU's ``IntervalCoverage``; hostile inputs."""

from __future__ import annotations

import numpy as np
import pytest

from jaxuq.calibration import (
    conformal_quantile,
    cqr_intervals,
    cqr_quantile,
    split_conformal_intervals,
    split_conformal_quantile,
)
from jaxuq.metrics import interval_coverage
from tests.helpers import require

pytestmark = pytest.mark.parity


def _data(n, seed):
    rng = np.random.default_rng(seed)
    mid = rng.normal(0, 2, n)
    half = rng.uniform(0.1, 1.5, n)
    q = np.stack([mid - half, mid + half], -1).astype(np.float32)
    y = (mid + rng.normal(0, 1.2, n)).astype(np.float32)
    return q, y


def _tu_cqr(alpha, cal_q, cal_y, test_q, batch_size):
    torch = require("torch")
    require("torch_uncertainty")
    from torch.utils.data import DataLoader, TensorDataset
    from torch_uncertainty.post_processing import ConformalRegCQR

    table = torch.from_numpy(np.concatenate([cal_q, test_q]))

    class Lookup(torch.nn.Module):
        def forward(self, x):
            return table[x[:, 0].long()]

    cqr = ConformalRegCQR(alpha=alpha, model=Lookup())
    idx = torch.arange(len(cal_q), dtype=torch.float32)[:, None]
    cqr.fit(DataLoader(TensorDataset(idx, torch.from_numpy(cal_y)), batch_size=batch_size))
    test_idx = torch.arange(len(cal_q), len(cal_q) + len(test_q), dtype=torch.float32)[:, None]
    return cqr.q_hat.numpy(), cqr(test_idx).numpy()


@pytest.mark.parametrize(("n", "alpha", "batch_size"), [(200, 0.1, 32), (57, 0.05, 57), (9, 0.05, 4),
                                                        (1000, 0.2, 100), (31, 0.5, 8)])
def test_cqr_equals_tu_exactly(n, alpha, batch_size):
    cal_q, cal_y = _data(n, n)
    test_q, test_y = _data(300, n + 1)
    q_tu, iv_tu = _tu_cqr(alpha, cal_q, cal_y, test_q, batch_size)
    q_hat = cqr_quantile(cal_q, cal_y, alpha)
    assert np.float32(q_hat) == q_tu  # exactly: the same score, chosen by the same rank
    iv = np.asarray(cqr_intervals(test_q, q_hat))
    np.testing.assert_array_equal(iv, iv_tu)
    perm = np.random.default_rng(0).permutation(n)
    assert np.float32(cqr_quantile(cal_q[perm], cal_y[perm], alpha)) == q_tu  # order-free
    torch = require("torch")
    from torch_uncertainty.metrics import IntervalCoverage

    cov = IntervalCoverage()
    cov.update(torch.from_numpy(iv_tu[:, 0]), torch.from_numpy(iv_tu[:, 1]), torch.from_numpy(test_y))
    assert abs(float(interval_coverage(iv[:, 0], iv[:, 1], test_y)) - float(cov.compute())) <= 1e-7


@pytest.mark.parametrize("alpha", [0.1, 0.3])
def test_split_conformal_is_cqr_on_point_predictions(alpha):
    q, y = _data(120, 3)
    preds = q.mean(-1)
    test_q, _ = _data(50, 4)
    test = test_q.mean(-1)
    q_tu, iv_tu = _tu_cqr(alpha, np.stack([preds, preds], -1), y, np.stack([test, test], -1), 16)
    q_hat = split_conformal_quantile(preds, y, alpha)
    assert np.float32(q_hat) == q_tu
    np.testing.assert_array_equal(np.asarray(split_conformal_intervals(test, q_hat)), iv_tu)
    # the finite-sample rank: TU's rule takes index ceil(k - k / n) (0-based) of the sorted scores
    s = np.sort(np.abs(y - preds))
    k = int(np.ceil(121 * (1 - alpha)))
    assert np.float32(q_hat) == s[min(k, len(s) - 1)]


def test_conformal_regression_refuses_hostile_input():
    q, y = _data(20, 0)
    with pytest.raises(ValueError, match="alpha"):
        cqr_quantile(q, y, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        split_conformal_quantile(q[:, 0], y, 0.0)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        cqr_quantile(np.zeros((20, 3), np.float32), y, 0.1)
    with pytest.raises(ValueError, match="lower"):
        cqr_quantile(q[:, ::-1], y, 0.1)
    with pytest.raises(ValueError, match="targets"):
        cqr_quantile(q, y[:-1], 0.1)
    with pytest.raises(ValueError, match="NaN"):
        cqr_quantile(q, np.where(np.arange(20) == 2, np.nan, y), 0.1)
    with pytest.raises(ValueError, match="NaN"):
        split_conformal_quantile(np.full(20, np.inf, np.float32), y, 0.1)
    with pytest.raises(ValueError, match="correction"):
        conformal_quantile(y, 0.1, "higher")
