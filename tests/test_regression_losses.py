"""Regression losses (``jaxuq.losses.regression``) against TU 0.13.0: values and gradients (``jax.vjp`` vs
torch autograd, through the heads' softplus/clamp) on the same raw head outputs, plus the pinned
``DERLoss`` reduction deviation and the hostile-input errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxuq.losses import BetaNLL, DERLoss, DistributionNLLLoss, PinballLoss
from jaxuq.nn.distributions import expand, num_params
from tests.helpers import require

pytestmark = pytest.mark.parity
N, DIM = 12, 1
FAMILIES = ("normal", "laplace", "cauchy", "gamma", "student", "nig")
TU_HEADS = {"normal": "Normal", "laplace": "Laplace", "cauchy": "Cauchy", "gamma": "Gamma",
            "student": "StudentT", "nig": "NormalInverseGamma"}


def _close(a, b, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    err = np.max(np.abs(a - b)) if a.size else 0.0
    assert err <= 1e-6 * max(1.0, float(np.max(np.abs(b)))), (what, err)
    return err


def _data(family, dim=DIM, seed=0):
    rng = np.random.default_rng(seed)
    raw = rng.normal(0, 1.5, (N, num_params(family) * dim)).astype(np.float32)
    y = (rng.gamma(2.0, 1.0, (N, dim)) if family == "gamma" else rng.normal(0, 2, (N, dim))).astype(np.float32)
    return raw, y


def _tu_head_forward(family, raw, dim):
    """TU's head forward on ``raw`` (an identity base layer), differentiable w.r.t. ``raw``."""
    torch = require("torch")
    from torch_uncertainty.layers import distributions as tud

    head = getattr(tud, f"{TU_HEADS[family]}Linear")(base_layer=torch.nn.Linear, event_dim=dim,
                                                     in_features=raw.shape[1])
    head.base_layer = torch.nn.Identity()
    raw_t = torch.tensor(raw, requires_grad=True)
    return raw_t, head(raw_t)


def _tu_dist(family, params):
    from torch.distributions import Independent
    from torch_uncertainty.utils.distributions import get_dist_class

    return Independent(get_dist_class(family)(**params), 1)


def _tu_value_grad(loss_t, raw_t, cot):
    torch = require("torch")
    loss_t.backward(torch.from_numpy(cot) if loss_t.ndim else None)
    return loss_t.detach().numpy(), raw_t.grad.numpy()


def _jax_value_grad(fn, raw, cot):
    val, vjp = jax.vjp(fn, jnp.asarray(raw))
    return np.asarray(val), np.asarray(vjp(jnp.asarray(cot, jnp.float32).reshape(val.shape))[0])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dim", [1, 3])
def test_distribution_nll_value_and_gradient(family, reduction, dim):
    torch = require("torch")
    from torch_uncertainty.losses import DistributionNLLLoss as TULoss

    raw, y = _data(family, dim)
    raw_t, params = _tu_head_forward(family, raw, dim)
    tu_loss = TULoss(reduction=None if reduction == "none" else reduction)(_tu_dist(family, params),
                                                                          torch.from_numpy(y))
    cot = np.random.default_rng(1).normal(size=tu_loss.shape).astype(np.float32) if tu_loss.ndim else np.ones(())
    ref_v, ref_g = _tu_value_grad(tu_loss, raw_t, cot)
    loss = DistributionNLLLoss(family, reduction)
    val, grad = _jax_value_grad(lambda r: loss(expand(family, r, dim), y[:, 0] if dim == 1 else y), raw, cot)
    _close(val, ref_v, "value")
    _close(grad, ref_g, "grad")


@pytest.mark.parametrize("reg_weight", [0.0, 1e-2, 1.0])
def test_der_loss_value_and_gradient(reg_weight):
    torch = require("torch")
    from torch_uncertainty.losses import DERLoss as TUDER

    raw, y = _data("nig")
    raw_t, params = _tu_head_forward("nig", raw, 1)
    ref_v, ref_g = _tu_value_grad(TUDER(reg_weight)(_tu_dist("nig", params), torch.from_numpy(y)), raw_t, None)
    val, grad = _jax_value_grad(lambda r: DERLoss(reg_weight)(expand("nig", r, 1), y), raw, np.ones(()))
    _close(val, ref_v, "value")
    _close(grad, ref_g, "grad")


def test_der_loss_reductions_deviation_pinned():
    """TU's "none" is an [N, N] matrix (``nll_j + w reg_i``: the [N] NLL plus the [N, 1] regulariser) and
    its "sum" N times the per-sample sum; jaxuq's per-sample loss [N] is that matrix's diagonal."""
    torch = require("torch")
    from torch_uncertainty.losses import DERLoss as TUDER

    raw, y = _data("nig")
    _, params = _tu_head_forward("nig", raw, 1)
    dist = _tu_dist("nig", {k: v.detach() for k, v in params.items()})
    tu_none = TUDER(0.5, reduction="none")(dist, torch.from_numpy(y)).numpy()
    assert tu_none.shape == (N, N)
    ours = np.asarray(DERLoss(0.5, reduction="none")(expand("nig", jnp.asarray(raw), 1), y))
    assert ours.shape == (N,)
    _close(ours, np.diag(tu_none), "per-sample")
    tu_sum = float(TUDER(0.5, reduction="sum")(dist, torch.from_numpy(y)))
    _close(N * float(DERLoss(0.5, reduction="sum")(expand("nig", jnp.asarray(raw), 1), y)), tu_sum, "sum")


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_beta_nll_value_and_gradient(beta, reduction):
    torch = require("torch")
    from torch_uncertainty.losses import BetaNLL as TUBeta

    rng = np.random.default_rng(2)
    mean, y = rng.normal(0, 2, (N, 2)).astype(np.float32), rng.normal(0, 2, (N, 2)).astype(np.float32)
    var = rng.uniform(1e-7, 3, (N, 2)).astype(np.float32)  # some below GaussianNLLLoss's 1e-6 clamp
    var[0, 0] = 2e-7
    mean_t, var_t = torch.tensor(mean, requires_grad=True), torch.tensor(var, requires_grad=True)
    tu = TUBeta(beta, reduction)(mean_t, torch.from_numpy(y), var_t)
    cot = rng.normal(size=tu.shape).astype(np.float32) if tu.ndim else np.ones((), np.float32)
    tu.backward(torch.from_numpy(cot) if tu.ndim else None)
    loss = BetaNLL(beta, reduction)
    val, vjp = jax.vjp(lambda m, v: loss(m, y, v), jnp.asarray(mean), jnp.asarray(var))
    gm, gv = vjp(jnp.asarray(cot).reshape(val.shape))
    _close(val, tu.detach().numpy(), "value")
    _close(gm, mean_t.grad.numpy(), "grad mean")
    _close(gv, var_t.grad.numpy(), "grad var")
    head = {"loc": jnp.asarray(mean), "scale": jnp.sqrt(jnp.asarray(var))}  # the Normal head's dict
    _close(loss(head, y), loss(mean, y, jnp.asarray(head["scale"]) ** 2), "dict form")


@pytest.mark.parametrize("quantile", [0.05, 0.1, 0.5, 0.9, 0.95])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_pinball_loss_value_and_gradient(quantile, reduction):
    torch = require("torch")
    from torch_uncertainty.losses import PinballLoss as TUPinball

    rng = np.random.default_rng(3)
    pred, y = rng.normal(0, 2, (N, 1)).astype(np.float32), rng.normal(0, 2, (N, 1)).astype(np.float32)
    pred[0, 0] = y[0, 0]  # a tie: torch and jax split the gradient of maximum alike
    pred_t = torch.tensor(pred, requires_grad=True)
    tu = TUPinball(quantile, reduction)(pred_t, torch.from_numpy(y))
    cot = rng.normal(size=tu.shape).astype(np.float32) if tu.ndim else np.ones((), np.float32)
    tu.backward(torch.from_numpy(cot) if tu.ndim else None)
    val, vjp = jax.vjp(lambda p: PinballLoss(quantile, reduction)(p, y[:, 0]), jnp.asarray(pred))
    _close(val, tu.detach().numpy(), "value")
    _close(vjp(jnp.asarray(cot).reshape(val.shape))[0], pred_t.grad.numpy(), "grad")


def test_pinball_loss_with_several_quantiles_is_the_mean_of_the_single_ones():
    rng = np.random.default_rng(4)
    pred, y = rng.normal(size=(N, 2)).astype(np.float32), rng.normal(size=N).astype(np.float32)
    both = PinballLoss((0.05, 0.95))(pred, y)
    singles = [PinballLoss(q)(pred[:, i], y) for i, q in enumerate((0.05, 0.95))]
    assert abs(float(both) - float(np.mean(singles))) <= 1e-7


def test_regression_losses_refuse_hostile_input():
    ok = {"loc": jnp.zeros((3, 1)), "scale": jnp.ones((3, 1))}
    for q in (0.0, 1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="quantile"):
            PinballLoss(q)
    with pytest.raises(ValueError, match="quantile"):
        PinballLoss((0.1, 1.2))
    for b in (-0.1, 1.1, float("inf")):
        with pytest.raises(ValueError, match="beta"):
            BetaNLL(b)
    with pytest.raises(ValueError, match="non-negative"):
        DERLoss(-1.0)
    with pytest.raises(ValueError, match="finite"):
        DERLoss(float("nan"))
    with pytest.raises(ValueError, match="reduction"):
        DistributionNLLLoss("normal", "avg")
    with pytest.raises(ValueError, match="dist_family"):
        DistributionNLLLoss("gauss")
    with pytest.raises(ValueError, match=r"\[3, 1\] or \[3\]"):
        DistributionNLLLoss("normal")(ok, jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"\[3, 1\] or \[3\]"):
        DistributionNLLLoss("normal")(ok, jnp.zeros((4,)))
    with pytest.raises(TypeError, match="float"):
        DistributionNLLLoss("normal")(ok, jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="keys"):
        DistributionNLLLoss("student")(ok, jnp.zeros((3,)))
    with pytest.raises(ValueError, match="variance"):
        BetaNLL()(jnp.zeros((3, 1)), jnp.zeros((3,)))
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        PinballLoss((0.1, 0.9))(jnp.zeros((3, 3)), jnp.zeros((3,)))
