"""Distribution heads, the distribution functions and the regression MLPs against TU 0.13.0.

TU's seeded heads / MLPs (``torch_uncertainty.layers.distributions``, ``models.mlp``) are converted
(``converters.mappings``, no ``--arch``) and fed TU's cubic toy data (``datasets.regression.toy.Cubic``);
parameters, log-densities, means/modes, cdf and icdf are compared with torch's distributions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxuq import distributions as Dist
from jaxuq.nn.distributions import DistConv, DistDense, check_dist_args, num_params
from tests.helpers import require

pytestmark = pytest.mark.parity
FAMILIES = ("normal", "laplace", "cauchy", "gamma", "student", "nig")
TU_HEADS = {"normal": "Normal", "laplace": "Laplace", "cauchy": "Cauchy", "gamma": "Gamma", "student": "StudentT",
            "nig": "NormalInverseGamma"}


@pytest.fixture(scope="module")
def cubic():
    torch = require("torch")
    require("torch_uncertainty")
    from torch_uncertainty.datasets.regression.toy import Cubic

    torch.manual_seed(0)
    ds = Cubic(num_samples=64)
    return ds.tensors[0].numpy(), ds.tensors[1].numpy()


def _np(t):
    return t.detach().numpy()


def _torch_dist(family, params):
    torch = require("torch")
    from torch.distributions import Independent
    from torch_uncertainty.utils.distributions import get_dist_class

    return Independent(get_dist_class(family)(**{k: torch.from_numpy(np.asarray(v)) for k, v in params.items()}), 1)


def _features(x):
    """Cubic inputs [N, 1] -> [N, 5] deterministic features (a hidden layer stand-in)."""
    return np.concatenate([x, x**2 / 4, np.sin(x), np.cos(x), -x], axis=1).astype(np.float32)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("event_dim", [1, 2])
def test_linear_head_parameters_and_log_likelihood(family, event_dim, cubic):
    torch = require("torch")
    from torch_uncertainty.layers import distributions as tud

    x, y = cubic
    torch.manual_seed(1)
    tu = getattr(tud, f"{TU_HEADS[family]}Linear")(base_layer=torch.nn.Linear, event_dim=event_dim, in_features=5)
    with torch.no_grad():  # push a few scales below the clamps (min_scale, min_df, ...)
        tu.base_layer.bias[event_dim:] -= torch.linspace(0, 30, tu.base_layer.bias.numel() - event_dim)
    feats = _features(x)
    with torch.no_grad():
        ref = tu(torch.from_numpy(feats))
    v = {"params": {"base_layer": {"kernel": _np(tu.base_layer.weight).T, "bias": _np(tu.base_layer.bias)}}}
    out = jax.jit(lambda v, f: DistDense(family, event_dim).apply(v, f))(v, feats)
    assert set(out) == set(ref) == set(Dist.PARAMS[family])
    for k in ref:
        assert np.max(np.abs(np.asarray(out[k]) - _np(ref[k]))) <= 1e-6 * max(1.0, float(ref[k].abs().max())), k
    target = np.abs(np.tile(y[:, None], (1, event_dim))) / 10 + 0.1  # > 0: in the Gamma's support
    dist = _torch_dist(family, {k: _np(t) for k, t in ref.items()})
    ref_lp = _np(dist.log_prob(torch.from_numpy(target)))
    params = {k: _np(t) for k, t in ref.items()}
    lp = jnp.sum(jax.jit(lambda p, t: Dist.log_prob(family, p, t))(params, target), -1)
    assert np.max(np.abs(np.asarray(lp) - ref_lp)) <= 1e-5 * max(1.0, np.abs(ref_lp).max())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("nd", [1, 2])
def test_conv_head_parameters(family, nd):
    torch = require("torch")
    from torch_uncertainty.layers import distributions as tud

    torch.manual_seed(2)
    conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d}[nd]
    tu = getattr(tud, f"{TU_HEADS[family]}ConvNd")(base_layer=conv, event_dim=2, in_channels=3, kernel_size=3,
                                                   padding=1, stride=2)
    x = np.random.default_rng(0).standard_normal((2, 3) + (9,) * nd).astype(np.float32)
    with torch.no_grad():
        ref = tu(torch.from_numpy(x))
    perm = (0, *range(2, nd + 2), 1)
    w = _np(tu.base_layer.weight).transpose(*range(2, nd + 2), 1, 0)
    v = {"params": {"base_layer": {"kernel": w, "bias": _np(tu.base_layer.bias)}}}
    out = DistConv(family, 2, 3, stride=2, padding=1).apply(v, x.transpose(perm))
    for k in ref:
        assert np.max(np.abs(np.asarray(out[k]) - _np(ref[k]).transpose(perm))) <= 1e-6, k


@pytest.mark.parametrize("family", FAMILIES)
def test_mean_mode_cdf_icdf_match_torch(family):
    torch = require("torch")
    rng = np.random.default_rng(3)
    n = 40
    raw = {"loc": rng.normal(0, 3, n), "scale": rng.uniform(0.1, 4, n), "df": rng.uniform(2, 30, n),
           "concentration": rng.uniform(0.5, 5, n), "rate": rng.uniform(0.2, 3, n), "lmbda": rng.uniform(0.1, 3, n),
           "alpha": rng.uniform(1.01, 5, n), "beta": rng.uniform(0.1, 3, n)}
    params = {k: raw[k][:, None].astype(np.float32) for k in Dist.PARAMS[family]}
    base = _torch_dist(family, params).base_dist
    if family != "nig":
        assert np.allclose(np.asarray(Dist.mode(family, params)), _np(base.mode), rtol=1e-6, equal_nan=True)
    else:
        with pytest.raises(ValueError, match="no mode"):
            Dist.mode(family, params)
    assert np.allclose(np.asarray(Dist.mean(family, params)), _np(base.mean), rtol=1e-6, equal_nan=True)
    if not Dist.has_icdf(family):
        with pytest.raises(ValueError, match="no icdf"):
            Dist.icdf(family, params, 0.3)
        return
    levels = torch.linspace(0.05, 0.95, 15)
    for q in torch.cat([(1 - levels) / 2, (1 + levels) / 2]):
        got = np.asarray(jax.jit(lambda p, q: Dist.icdf(family, p, q))(params, q.numpy()))
        assert np.max(np.abs(got - _np(base.icdf(q)))) <= 2e-6 * max(1.0, float(base.icdf(q).abs().max()))
    y = (raw["loc"] + rng.normal(0, 2, n))[:, None].astype(np.float32)
    assert np.max(np.abs(np.asarray(Dist.cdf(family, params, y)) - _np(base.cdf(torch.from_numpy(y))))) <= 1e-6


def test_check_params_and_dist_args_refuse_bad_input():
    good = {"loc": np.zeros((3, 1), np.float32), "scale": np.ones((3, 1), np.float32)}
    assert set(Dist.check_params("normal", good)) == {"loc", "scale"}
    with pytest.raises(ValueError, match=r"'scale'.*> 0"):
        Dist.check_params("normal", {**good, "scale": -np.ones((3, 1), np.float32)})
    with pytest.raises(ValueError, match="NaN"):
        Dist.check_params("normal", {**good, "loc": np.full((3, 1), np.nan, np.float32)})
    with pytest.raises(ValueError, match="keys"):
        Dist.check_params("student", good)
    with pytest.raises(ValueError, match="same shape"):
        Dist.check_params("normal", {**good, "scale": np.ones((3, 2), np.float32)})
    with pytest.raises(ValueError, match=">= 1"):
        Dist.check_params("nig", {"loc": good["loc"], "lmbda": good["scale"], "alpha": good["scale"] * 0.5,
                                  "beta": good["scale"]})
    with pytest.raises(ValueError, match="dist_family"):
        Dist.check_family("gaussian")
    with pytest.raises(TypeError, match="dist_family"):
        Dist.check_family(None)
    with pytest.raises(TypeError, match="takes"):
        check_dist_args("normal", {"min_df": 1.0})
    with pytest.raises(ValueError, match="fixed_df"):
        check_dist_args("student", {"fixed_df": -1.0})
    assert num_params("student", {"fixed_df": 3.0}) == 2 and num_params("nig") == 4


# ----------------------------------------------------------------------------- the MLPs, converted
FORMS = [("mlp", {}, {}), ("packed_mlp", {"num_estimators": 3, "alpha": 2, "gamma": 1}, {"num_estimators": 3, "alpha": 2}),
         ("batched_mlp", {"num_estimators": 3}, {}), ("mimo_mlp", {"num_estimators": 3}, {"num_estimators": 3})]


@pytest.mark.parametrize("form,tu_kw,convert_kw", FORMS, ids=[f[0] for f in FORMS])
@pytest.mark.parametrize("family", [None, "normal", "student", "nig"])
def test_mlp_forms_convert_without_arch_and_match_tu(form, tu_kw, convert_kw, family, cubic, tmp_path):
    torch = require("torch")
    from torch_uncertainty.models import mlp as tu_mlp

    from converters.core import convert

    torch.manual_seed(4)
    tu = getattr(tu_mlp, form)(in_features=1, num_outputs=1, hidden_dims=[12, 6], dist_family=family, **tu_kw).eval()
    torch.save({f"model.{k}": v for k, v in tu.state_dict().items()}, tmp_path / "m.ckpt")
    kw = convert_kw | ({"dist_family": family} if family else {})
    res = convert([tmp_path / "m.ckpt"], arch="mimo_mlp" if form == "mimo_mlp" else None, kwargs=kw or None)
    assert res["meta"]["arch"] == form
    x = cubic[0]
    with torch.no_grad():
        ref = tu(torch.from_numpy(x))
    out = res["module"].apply(res["variables"], x)
    ref = ref if isinstance(ref, dict) else {"out": ref}
    out = out if isinstance(out, dict) else {"out": out}
    for k in ref:
        assert np.max(np.abs(np.asarray(out[k]) - _np(ref[k]))) <= 1e-6 * max(1.0, float(ref[k].abs().max())), k


def test_bayesian_mlp_with_injected_noise_matches_tu(cubic):
    torch = require("torch")
    from torch_uncertainty.layers.bayesian import bayesian_modules
    from torch_uncertainty.models.mlp import bayesian_mlp as tu_bayesian_mlp

    from converters import mappings
    from experiments._inject import bayes_noise
    from jaxuq.nn.bayesian import EPS
    from tests.torch_models import state_dict_numpy

    torch.manual_seed(5)
    tu = tu_bayesian_mlp(1, 1, [16, 8], num_samples=2, dist_family="normal")
    arch, kw = mappings.infer(state_dict_numpy(tu))
    assert arch == "bayesian_mlp" and kw == {}
    from converters.core import _resolve_arch

    arch, kw = _resolve_arch(None, {"dist_family": "normal"}, state_dict_numpy(tu), "tu")
    module, variables = mappings.convert_state_dict(arch, state_dict_numpy(tu), **kw)
    layers = {n.removeprefix("core_model."): m for n, m in tu.named_modules() if isinstance(m, bayesian_modules)}
    rng = np.random.default_rng(6)
    draws = {n: {"weight": rng.standard_normal(m.weight_mu.shape).astype(np.float32),
                 "bias": rng.standard_normal(m.bias_mu.shape).astype(np.float32)} for n, m in layers.items()}
    queues = {id(getattr(m, f"{p}_sampler")): draws[n][p] for n, m in layers.items() for p in ("weight", "bias")}
    tu.train()
    with bayes_noise(lambda s: queues[id(s)]), torch.no_grad():
        ref = tu(torch.from_numpy(cubic[0]))
    eps = {}
    for n, d in draws.items():
        node = eps
        for part in n.replace("layers.", "layers_").split("."):
            node = node.setdefault(part, {})
        node |= {"weight": d["weight"].T, "bias": d["bias"]}
    out = module.apply({**variables, EPS: eps}, cubic[0])
    for k in ref:
        assert np.max(np.abs(np.asarray(out[k]) - _np(ref[k]))) <= 1e-6 * max(1.0, float(ref[k].abs().max())), k


def test_mlp_refuses_bad_arguments_and_converter_asks_for_the_family(tmp_path):
    torch = require("torch")
    from torch_uncertainty.models.mlp import mlp as tu_mlp

    from converters.core import ConvertError, convert
    from jaxuq import models

    with pytest.raises(ValueError, match="dist_family"):
        models.get("mlp", in_features=1, num_outputs=1, hidden_dims=[4], dist_family="gauss")
    with pytest.raises(TypeError, match="hidden_dims"):
        models.get("mlp", in_features=1, num_outputs=1, hidden_dims=4)
    with pytest.raises(ValueError, match="num_outputs"):
        models.get("mlp", in_features=1, num_outputs=0, hidden_dims=[4])
    with pytest.raises(ValueError, match="dist_args"):
        models.get("mlp", in_features=1, num_outputs=1, hidden_dims=[4], dist_args={"min_scale": 1.0})
    m = models.get("mlp", in_features=2, num_outputs=1, hidden_dims=[], dist_family="normal")  # TU: no head
    v = m.init(jax.random.key(0), jnp.ones((1, 2)))
    assert set(m.apply(v, jnp.ones((3, 2)))) == {"loc", "scale"}
    torch.save(tu_mlp(1, 1, [4], dist_family="laplace").state_dict(), tmp_path / "h.pt")
    with pytest.raises(ConvertError, match="dist_family"):
        convert([tmp_path / "h.pt"])
