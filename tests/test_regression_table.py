"""The regression test table (``jaxuq.evaluation.regression_table``, ``jaxuq.evaluate`` on a regression model)
against TU 0.13.0's ``RegressionRoutine``: the routine's own ``test_step`` over a fixed-prediction model
(a lookup table), at two batch sizes, then its metric collections' ``compute()`` (what ``on_test_epoch_end``
logs). Also the members' mixture (against torch's ``MixtureSameFamily`` and a float64 quantile check), the
printed table, order/batch invariance and hostile inputs."""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxuq
from jaxuq import distributions as Dist
from jaxuq.evaluation import predict, regression_table
from tests.helpers import require

pytestmark = pytest.mark.parity
N = 150
FAMILIES = ("normal", "laplace", "cauchy", "student", "gamma", "nig")


def _params(family, shape, seed):
    rng = np.random.default_rng(seed)
    raw = {"loc": rng.normal(0, 3, shape), "scale": rng.uniform(0.2, 3, shape), "df": rng.uniform(2, 9, shape),
           "concentration": rng.uniform(0.5, 4, shape), "rate": rng.uniform(0.3, 2, shape),
           "lmbda": rng.uniform(0.2, 3, shape), "alpha": rng.uniform(1.1, 4, shape), "beta": rng.uniform(0.2, 3, shape)}
    return {k: raw[k].astype(np.float32) for k in Dist.PARAMS[family]}


def _targets(family, shape, seed):
    rng = np.random.default_rng(seed + 100)
    return (rng.gamma(2.0, 1.0, shape) if family == "gamma" else rng.normal(0, 4, shape)).astype(np.float32)


def tu_routine_table(outputs, targets, *, family=None, estimate="mean", members=1, batch_size=32):
    """TU's ``RegressionRoutine`` test table of a model that returns ``outputs`` (``[M*N, D]`` member-major
    arrays or dicts of them) for input rows ``0..N-1``."""
    torch = require("torch")
    require("torch_uncertainty")
    from torch_uncertainty.routines import RegressionRoutine

    class Lookup(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            idx = x[:, 0].long()
            rows = torch.cat([idx + m * len(targets) for m in range(members)])
            pick = lambda a: torch.from_numpy(np.asarray(a))[rows]  # noqa: E731
            return {k: pick(v) for k, v in outputs.items()} if isinstance(outputs, dict) else pick(outputs)

    dim = (next(iter(outputs.values())) if isinstance(outputs, dict) else outputs).shape[-1]
    routine = RegressionRoutine(Lookup(), output_dim=dim, dist_family=family, dist_estimate=estimate,
                                is_ensemble=members > 1)
    routine.eval()
    x = torch.arange(len(targets), dtype=torch.float32)[:, None]
    y = torch.from_numpy(targets)
    with torch.no_grad():
        for i in range(0, len(targets), batch_size):
            routine.test_step((x[i:i + batch_size], y[i:i + batch_size]), i // batch_size)
    res = routine.test_metrics.compute()
    if family is not None:
        res |= routine.test_prob_metrics.compute()
    return {k: float(v) for k, v in res.items()}


def _compare(ours: dict, ref: dict, rel: float = 1e-6) -> float:
    assert set(ours) == set(ref), (set(ours) ^ set(ref))
    worst = 0.0
    for k, v in ref.items():
        if np.isnan(v):
            assert np.isnan(ours[k]), k
            continue
        err = abs(ours[k] - v) / max(1.0, abs(v))
        assert err <= rel, (k, ours[k], v)
        worst = max(worst, err)
    return worst


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dim", [1, 2])
def test_table_equals_tu_routine_for_each_family(family, dim):
    params, y = _params(family, (N, dim), 0), _targets(family, (N, dim), 0)
    yt = y[:, 0] if dim == 1 else y  # TU's routine takes [N] targets for one-dimensional regression
    ref = tu_routine_table(params, yt, family=family, batch_size=32)
    assert _compare(ref, tu_routine_table(params, yt, family=family, batch_size=N), 1e-5) >= 0  # TU vs itself
    _compare(regression_table(dist=params, dist_family=family, targets=yt), ref)
    perm = np.random.default_rng(1).permutation(N)
    shuffled = regression_table(dist={k: v[perm] for k, v in params.items()}, dist_family=family, targets=yt[perm])
    _compare(shuffled, ref)
    if family in ("normal", "student", "gamma"):  # TU's dist_estimate="mode"
        ref_mode = tu_routine_table(params, yt, family=family, estimate="mode")
        _compare(regression_table(dist=params, dist_family=family, targets=yt, estimate="mode"), ref_mode)


def test_point_regression_table_equals_tu_routine():
    rng = np.random.default_rng(2)
    preds, y = rng.normal(0, 2, (N, 3)).astype(np.float32), rng.normal(0, 2, (N, 3)).astype(np.float32)
    _compare(regression_table(preds, y), tu_routine_table(preds, y))
    members = rng.normal(0, 2, (4, N, 3)).astype(np.float32)
    ref = tu_routine_table(members.reshape(4 * N, 3), y, members=4)
    _compare(regression_table(members, y), ref)


@pytest.mark.parametrize("family", ["normal", "student", "nig"])
def test_members_average_is_tu_and_mixture_is_the_predictive_mixture(family):
    torch = require("torch")
    from torch.distributions import Categorical, Independent, MixtureSameFamily
    from torch_uncertainty.utils.distributions import get_dist_class

    m = 3
    params = {k: np.stack([v_m for v_m in [_params(family, (N, 1), s)[k] for s in range(m)]])
              for k in Dist.PARAMS[family]}
    y = _targets(family, (N, 1), 5)
    ref = tu_routine_table({k: v.reshape(m * N, 1) for k, v in params.items()}, y[:, 0], family=family, members=m)
    _compare(regression_table(dist=params, dist_family=family, targets=y, members="average"), ref)
    mix = regression_table(dist=params, dist_family=family, targets=y)
    comp = Independent(get_dist_class(family)(**{k: torch.from_numpy(np.moveaxis(v, 0, 1)) for k, v in
                                                 params.items()}), 1)
    mixture = MixtureSameFamily(Categorical(torch.ones(N, m)), comp)
    nll = -mixture.log_prob(torch.from_numpy(y)).sum().item() / y.size
    assert abs(mix["test/reg/NLL"] - nll) <= 1e-6 * max(1.0, abs(nll))
    assert abs(mix["test/reg/MAE"] - float(np.mean(np.abs(mixture.mean.numpy() - y)))) <= 1e-6
    if family == "nig":
        assert np.isnan(mix["test/cal/QCE"])
        return
    # float64 reference: the mixture's quantiles by bisection of its cdf, then TU's coverage rule
    import scipy.stats as st

    comps = [st.norm(params["loc"][i], params["scale"][i]) if family == "normal" else
             st.t(params["df"][i], params["loc"][i], params["scale"][i]) for i in range(m)]
    levels = torch.linspace(0.05, 0.95, 15).double().numpy()
    u = np.mean([c.cdf(y.astype(np.float64)) for c in comps], axis=0)
    cov = np.array([np.mean((u >= (1 - lv) / 2) & (u <= (1 + lv) / 2)) for lv in levels])
    assert abs(mix["test/cal/QCE"] - np.mean(np.abs(cov - levels))) <= 1e-6


def test_print_table_is_tu_printer():
    require("torch_uncertainty")
    from rich.console import Console
    from torch_uncertainty.utils.evaluation_loop import TUEvaluationLoop

    res = regression_table(dist=_params("normal", (N, 1), 3), dist_family="normal", targets=_targets("normal", (N,), 3),
                           flops=1234, params=5678)
    ours, theirs = io.StringIO(), io.StringIO()
    jaxuq.report.print_table(res, console=Console(file=ours, width=100, color_system=None))
    import torch_uncertainty.utils.evaluation_loop as tu_loop

    orig = tu_loop.get_console
    tu_loop.get_console = lambda: Console(file=theirs, width=100, color_system=None)
    try:
        import torch

        TUEvaluationLoop._print_results([{k: torch.tensor(v) for k, v in res.items()}], "test")
    finally:
        tu_loop.get_console = orig
    assert ours.getvalue() == theirs.getvalue()
    assert "Regression" in ours.getvalue() and "QCE" in ours.getvalue()


@pytest.fixture(scope="module")
def model_and_data():
    from jaxuq import models

    m = models.get("mlp", in_features=1, num_outputs=1, hidden_dims=[16], dist_family="normal")
    v = m.init(jax.random.key(0), jnp.ones((1, 1)))
    rng = np.random.default_rng(7)
    x = rng.uniform(-4, 4, (101, 1)).astype(np.float32)
    y = (x[:, 0] + rng.normal(0, 1, 101)).astype(np.float32)
    return m, v, x, y


def test_evaluate_on_a_model_equals_the_table_at_any_batch_size(model_and_data):
    m, v, x, y = model_and_data
    n = jaxuq.metrics.count_params(v["params"])
    assert n == 16 + 16 + 16 * 2 + 2  # Linear(1, 16), the normal head's Linear(16, 2)
    ref = regression_table(dist=predict(m, v, x), dist_family="normal", targets=y, params=n)
    for bs in (7, 101, 1024):
        res = jaxuq.evaluate(m, v, (x, y), batch_size=bs, progress=False)
        _compare(res, ref)
    perm = np.random.default_rng(0).permutation(len(x))
    _compare(jaxuq.evaluate(m, v, (x[perm], y[perm]), batch_size=16, progress=False), ref)
    stacked = jax.tree.map(lambda a: jnp.stack([a, a * 0.9]), v)
    ens = jaxuq.evaluate(m, stacked, (x, y), lowering="vmap", batch_size=16, progress=False)
    out = predict(m, stacked, x, lowering="vmap")
    _compare(ens, regression_table(dist=out, dist_family="normal", targets=y, params=2 * n))


def test_regression_table_refuses_hostile_input(model_and_data):
    m, v, x, y = model_and_data
    p = {"loc": np.zeros((4, 1), np.float32), "scale": np.ones((4, 1), np.float32)}
    t = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="NaN"):
        regression_table(dist=p, dist_family="normal", targets=np.array([0, np.nan, 0, 0], np.float32))
    with pytest.raises(ValueError, match=r"\[4, 1\] or \[4\]"):
        regression_table(dist=p, dist_family="normal", targets=np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="scale"):
        regression_table(dist={**p, "scale": -p["scale"]}, dist_family="normal", targets=t)
    with pytest.raises(ValueError, match="members"):
        regression_table(dist=p, dist_family="normal", targets=t, members="vote")
    with pytest.raises(ValueError, match="no mode"):
        regression_table(dist={"loc": p["loc"], "lmbda": p["scale"], "alpha": p["scale"] + 1, "beta": p["scale"]},
                         dist_family="nig", targets=t, estimate="mode")
    with pytest.raises(ValueError, match="mixture has no closed-form mode"):
        regression_table(dist={k: np.stack([a, a]) for k, a in p.items()}, dist_family="normal", targets=t,
                         estimate="mode")
    with pytest.raises(ValueError, match="exactly one"):
        regression_table(targets=t)
    with pytest.raises(ValueError, match="NaN"):
        jaxuq.evaluate(m, v, (x, np.where(np.arange(len(y)) == 3, np.nan, y)), progress=False)
    with pytest.raises(ValueError, match="OOD"):
        jaxuq.evaluate(m, v, (x, y), ood_data=x, progress=False)
