"""Bayesian layers, KLDiv/ELBO and bayesian_lenet against TU 0.13.0 with injected noise.

The test draws ``eps`` (numpy, torch layout); jaxuq gets it through the ``bayes_eps`` collection, TU
through ``experiments._inject.bayes_noise`` (its ``TrainableDistribution.sample``). Training goes through
``fit`` with ``ELBOObjective``: there jaxuq draws the noise from its keys, the test replays them (the
draws are sown into ``bayes_noise``) and hands TU the same eps. Prediction goes through the one forward
pass with ``BayesSampler``. One deviation is
pinned here: TU's log-posterior is the Gaussian log-density minus 0.5 per weight (see
``jaxuq.nn.bayesian``); every comparison of log q, KL and ELBO adds that constant back to TU's value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxuq.data.pipeline import epoch_permutation
from jaxuq.forward import forward
from jaxuq.losses import ELBOLoss, cross_entropy, kl_divergence
from jaxuq.models.bayesian_lenet import bayesian_lenet
from jaxuq.nn.bayesian import EPS, KL, NOISE, BayesConv, BayesDense
from jaxuq.sampling import BayesSampler
from jaxuq.train import ELBOObjective, TrainConfig, TrainState, fit
from tests.helpers import require

pytestmark = pytest.mark.parity
B = 4


def _flax_layout(a: np.ndarray) -> np.ndarray:
    return np.transpose(a, (2, 3, 1, 0)) if a.ndim == 4 else (a.T if a.ndim == 2 else a)


def _bayes_layers(tu_model) -> dict:
    from torch_uncertainty.layers.bayesian import bayesian_modules

    return {n.removeprefix("core_model."): m for n, m in tu_model.named_modules() if isinstance(m, bayesian_modules)}


def _draw_eps(layers: dict, num: int, seed: int) -> list[dict]:
    """``num`` noise draws ``{layer: {"weight": eps, "bias": eps}}`` in torch's layout."""
    rng = np.random.default_rng(seed)
    return [{n: {"weight": rng.standard_normal(m.weight_mu.shape).astype(np.float32),
                 "bias": rng.standard_normal(m.bias_mu.shape).astype(np.float32)} for n, m in layers.items()}
            for _ in range(num)]


def _jax_eps(draws: list[dict]):
    """The draws as a ``bayes_eps`` tree (Flax layout), stacked on a leading [S] axis."""
    trees = [{n: {k: _flax_layout(v) for k, v in d.items()} for n, d in draw.items()} for draw in draws]
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def _tu_eps(layers: dict, draws: list[dict]):
    """``eps_of(sampler)`` for ``bayes_noise``: each sampler pops its own draws in order."""
    queues = {}
    for n, m in layers.items():
        queues[id(m.weight_sampler)] = [d[n]["weight"] for d in draws]
        queues[id(m.bias_sampler)] = [d[n]["bias"] for d in draws]
    return lambda sampler: queues[id(sampler)].pop(0)


def _tu_offset(layers: dict) -> float:
    """TU's KL minus the true one-sample KL: mean over layers of 0.5 * (number of weights)."""
    return float(np.mean([0.5 * (m.weight_mu.numel() + m.bias_mu.numel()) for m in layers.values()]))


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("prior", [{}, {"prior_pi": 0.5, "prior_sigma_1": 0.3}])
def test_layer_output_and_log_terms_match_tu(kind, prior):
    torch = require("torch")
    require("torch_uncertainty")
    from torch_uncertainty.layers.bayesian import BayesConv2d, BayesLinear

    from experiments._inject import bayes_noise

    torch.manual_seed(1)
    if kind == "dense":
        tu, ours, x = BayesLinear(7, 5, **prior), BayesDense(5, **prior), np.ones((B, 7), np.float32)
    else:
        tu = BayesConv2d(3, 4, 3, stride=2, padding=1, groups=1, **prior)
        ours, x = BayesConv(4, 3, strides=2, padding=1, **prior), np.ones((B, 9, 9, 3), np.float32)
    x = (x * np.random.default_rng(0).standard_normal(x.shape)).astype(np.float32)
    params = {k: _flax_layout(v.detach().numpy()) for k, v in tu.named_parameters() if "sampler" not in k}
    draw = _draw_eps({"layer": tu}, 1, seed=2)
    with bayes_noise(_tu_eps({"layer": tu}, draw)), torch.no_grad():
        xt = torch.from_numpy(x if kind == "dense" else x.transpose(0, 3, 1, 2))
        ref = tu(xt).numpy()
    ref = ref if kind == "dense" else ref.transpose(0, 2, 3, 1)
    eps = jax.tree.map(lambda a: a[0], _jax_eps(draw))["layer"]
    out, state = jax.jit(lambda v: ours.apply(v, x, mutable=[KL]))({"params": params, EPS: eps})
    assert np.max(np.abs(np.asarray(out) - ref)) <= 1e-5
    n = tu.weight_mu.numel() + tu.bias_mu.numel()
    lq, lp = float(state[KL]["log_posterior"][0]), float(state[KL]["log_prior"][0])
    tu_lq, tu_lp = float(tu.log_variational_posterior), float(tu.log_prior)
    assert abs(lq - (tu_lq + 0.5 * n)) <= 1e-5 * max(1.0, abs(lq))  # the documented deviation
    assert abs(lp - tu_lp) <= 1e-5 * max(1.0, abs(lp))
    frozen = type(ours)(**{**{f: getattr(ours, f) for f in ours.__dataclass_fields__
                              if f not in ("parent", "name")}, "frozen": True})
    tu.freeze()
    with torch.no_grad():
        ref_frozen = tu(xt).numpy()
    ref_frozen = ref_frozen if kind == "dense" else ref_frozen.transpose(0, 2, 3, 1)
    out_frozen, st = frozen.apply({"params": params}, x, mutable=[KL])
    assert np.max(np.abs(np.asarray(out_frozen) - ref_frozen)) <= 1e-5 and not st


@pytest.fixture(scope="module")
def tu_bayes_lenet():
    torch = require("torch")
    require("torch_uncertainty")
    from torch_uncertainty.models.classification import bayesian_lenet as tu_bayesian_lenet

    from converters import mappings
    from tests.torch_models import state_dict_numpy

    torch.manual_seed(3)
    tu = tu_bayesian_lenet(1, 10, num_samples=3, prior_pi=0.5, prior_sigma_2=0.05)
    arch, kw = mappings.infer(state_dict_numpy(tu))
    assert arch == "bayesian_lenet" and kw["prior_pi"] == 0.5 and kw["prior_sigma_2"] == 0.05
    module, variables = mappings.convert_state_dict(arch, state_dict_numpy(tu), **kw)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((B, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, B)
    return tu, module, variables, x, y


def test_bayesian_lenet_logits_and_kl_match_tu(tu_bayes_lenet):
    torch = require("torch")
    from torch_uncertainty.losses import KLDiv

    from experiments._inject import bayes_noise

    tu, module, variables, x, _ = tu_bayes_lenet
    layers = _bayes_layers(tu)
    draw = _draw_eps(layers, 1, seed=5)
    tu.train()
    with bayes_noise(_tu_eps(layers, draw)), torch.no_grad():
        ref = tu(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
        tu_kl = float(KLDiv(tu)())
    eps = jax.tree.map(lambda a: a[0], _jax_eps(draw))
    out, state = jax.jit(lambda v: module.apply(v, x, mutable=[KL]))({**variables, EPS: eps})
    assert np.max(np.abs(np.asarray(out) - ref)) <= 1e-5
    kl = float(kl_divergence(state[KL]))
    assert abs(kl - (tu_kl + _tu_offset(layers))) <= 1e-5 * abs(kl)


def _torch_layout(a: np.ndarray) -> np.ndarray:
    return np.transpose(a, (3, 2, 0, 1)) if a.ndim == 4 else (a.T if a.ndim == 2 else a)


def _fit_draws(module, variables, x, state_key, num_samples: int) -> list[dict]:
    """The eps ``fit``'s first step draws with ``ELBOObjective`` (torch layout): its keys replayed
    (step key ``split(fold_in(key, 0))[1]``, sample ``s`` ``split(.., S)[s]``, streams ``('bayes',
    'dropout')``), the draws read from the sown ``bayes_noise`` collection."""
    k_drop = jax.random.split(jax.random.fold_in(state_key, 0))[1]
    draws = []
    for k in jax.random.split(k_drop, num_samples):
        kb, kd = jax.random.split(k)
        _, cols = module.apply(variables, x, train=True, rngs={"bayes": kb, "dropout": kd},
                               mutable=[NOISE, "batch_stats"])
        draws.append({n: {w: _torch_layout(np.asarray(v[0])) for w, v in d.items()} for n, d in cols[NOISE].items()})
    return draws


@pytest.mark.parametrize("norm", ["none", "batchnorm"])
def test_elbo_through_fit_one_sgd_step_matches_tu(norm):
    """One ``fit`` step with ``ELBOObjective`` (2 samples; vmapped without BatchNorm, sequential with it,
    as TU's running statistics need) against TU's ``ELBOLoss`` + SGD on the same batch and noise: the
    ELBO value (the epoch's train_loss), the parameters and the BatchNorm statistics after the step."""
    torch = require("torch")
    require("torch_uncertainty")
    from torch import nn
    from torch_uncertainty.losses import ELBOLoss as TUELBOLoss
    from torch_uncertainty.models.classification import bayesian_lenet as tu_bayesian_lenet

    from converters import mappings
    from experiments._inject import bayes_noise
    from tests.torch_models import randomize_, state_dict_numpy

    torch.manual_seed(6)
    tu = tu_bayesian_lenet(1, 10, num_samples=2, **({"norm": nn.BatchNorm2d} if norm == "batchnorm" else {}))
    randomize_(tu).train()
    arch, kw = mappings.infer(state_dict_numpy(tu))
    module, variables = mappings.convert_state_dict(arch, state_dict_numpy(tu), **kw)
    layers = _bayes_layers(tu)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((B, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, B)
    kl_weight, lr, key = 0.02, 0.1, jax.random.key(11)
    cfg = TrainConfig(epochs=1, batch_size=B, preprocess=None, quiet=True,
                      objective=ELBOObjective(ELBOLoss(kl_weight=kl_weight, num_samples=2)))
    perm = np.asarray(epoch_permutation(jax.random.split(jax.random.key(cfg.seed))[1], 0, B))  # fit's order
    xb, yb = x[perm], y[perm]
    draws = _fit_draws(module, variables, xb, key, 2)
    tu_loss = TUELBOLoss(tu, nn.CrossEntropyLoss(), kl_weight=kl_weight, num_samples=2)
    opt = torch.optim.SGD(tu.parameters(), lr=lr)
    with bayes_noise(_tu_eps(layers, draws)):
        value_tu = tu_loss(torch.from_numpy(xb.transpose(0, 3, 1, 2).copy()), torch.from_numpy(yb))
        opt.zero_grad()
        value_tu.backward()
        opt.step()
    tx = optax.sgd(lr)
    params = jax.tree.map(jnp.asarray, variables["params"])
    state = TrainState(step=jnp.zeros((), jnp.int32), apply_fn=module.apply, params=params, tx=tx,
                       opt_state=tx.init(params), batch_stats=variables.get("batch_stats", {}), key=key)
    r = fit(module, (x, y), cfg, init_state=state)
    expected = float(value_tu.detach()) + kl_weight * _tu_offset(layers)
    got = r.history[0]["train_loss"]
    assert abs(got - expected) <= 1e-5 * abs(expected), (got, expected)  # relative: |ELBO| ~ 1e2-1e3
    ref = mappings.convert_state_dict(arch, state_dict_numpy(tu), **kw)[1]
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))), r.state.params, ref["params"])
    assert max(jax.tree.leaves(diffs)) <= 1e-5, diffs
    if norm == "batchnorm":  # two sequential train forwards update the running statistics twice, as TU
        bs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))), r.state.batch_stats,
                          ref["batch_stats"])
        assert max(jax.tree.leaves(bs)) <= 1e-5, bs


def test_sampler_draws_and_frozen_model_matches_tu(tu_bayes_lenet):
    torch = require("torch")
    tu, module, variables, x, _ = tu_bayes_lenet
    out = np.asarray(forward(module, variables, x, sampler=BayesSampler(3), key=jax.random.key(0)))
    assert out.shape == (3, B, 10) and np.std(out, axis=0).max() > 1e-4
    again = forward(module, variables, x, sampler=BayesSampler(3, on_batch=False), key=jax.random.key(0))
    np.testing.assert_allclose(out, np.asarray(again), atol=1e-6)
    tu.eval()
    tu.freeze()
    try:
        with torch.no_grad():
            ref = tu(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()  # StochasticModel: [(S B), C]
    finally:
        tu.unfreeze()
    frozen = module.clone(frozen=True)
    mean = np.asarray(jax.jit(frozen.apply)(variables, x))
    assert ref.shape == (3 * B, 10) and np.max(np.abs(np.tile(mean, (3, 1)) - ref)) <= 1e-5


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="kl_weight"):
        ELBOLoss(kl_weight=-1.0, num_samples=1)
    with pytest.raises(ValueError, match="kl_weight"):
        ELBOLoss(kl_weight=float("nan"), num_samples=1)
    with pytest.raises(ValueError, match="num_samples"):
        ELBOLoss(kl_weight=0.1, num_samples=0)
    with pytest.raises(TypeError, match="num_samples"):
        ELBOLoss(kl_weight=0.1, num_samples=2.0)
    with pytest.raises(TypeError, match="not a class"):
        ELBOLoss(kl_weight=0.1, num_samples=1, inner_loss=ELBOLoss)
    with pytest.raises(ValueError, match="no KL terms"):
        kl_divergence({})
    with pytest.raises(ValueError, match="`num_samples` must be >= 1"):
        BayesSampler(0)
    with pytest.raises(TypeError, match="loss must be a jaxuq.losses.ELBOLoss"):
        ELBOObjective(cross_entropy)
    m = bayesian_lenet(1, 10)
    x = jnp.zeros((2, 28, 28, 1))
    v = jax.eval_shape(lambda: m.init(jax.random.key(0), x))  # the errors are raised while tracing
    with pytest.raises(ValueError, match="no 'bayes' rng"):
        jax.eval_shape(lambda v: m.apply(v, x), v)
    bad = {"fc3": {"weight": jnp.zeros((3, 3)), "bias": jnp.zeros(10)}}
    with pytest.raises(ValueError, match="injected bayes_eps/weight has shape"):
        jax.eval_shape(lambda v: m.apply({**v, EPS: bad}, x, rngs={"bayes": jax.random.key(0)}), v)
    loss = ELBOLoss(kl_weight=0.1, num_samples=2)
    with pytest.raises(ValueError, match="expected outputs"):
        loss(jnp.zeros((3, 2, 10)), jnp.zeros(2, jnp.int32), jnp.zeros(3))
    assert float(loss(jnp.zeros((2, 2, 10)), jnp.zeros(2, jnp.int32), jnp.ones(2))) == pytest.approx(
        float(cross_entropy(jnp.zeros((2, 10)), jnp.zeros(2, jnp.int32))) + 0.1)


def test_converter_recognises_a_tu_checkpoint(tmp_path):
    torch = require("torch")
    require("torch_uncertainty")
    from torch_uncertainty.models.classification import bayesian_lenet as tu_bayesian_lenet

    from converters.core import ConvertError, convert

    torch.manual_seed(9)
    tu = tu_bayesian_lenet(1, 10, prior_sigma_1=0.2)
    path = tmp_path / "bnn.pt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in tu.state_dict().items()}}, path)  # Lightning-like
    out = convert([path])
    assert out["meta"]["arch"] == "bayesian_lenet" and out["meta"]["kwargs"]["prior_sigma_1"] == 0.2
    mu = tu.core_model.fc1.weight_mu.detach().numpy().T
    np.testing.assert_array_equal(np.asarray(out["variables"]["params"]["fc1"]["weight_mu"]), mu)
    sd = tu.state_dict()
    sd["core_model.conv2.bias_sampler.rho"] = sd["core_model.conv2.bias_sampler.rho"] + 1
    torch.save(sd, path)
    with pytest.raises(ConvertError, match="duplicated parameters differ: conv2.bias_sampler.rho"):
        convert([path], arch="bayesian_lenet", kwargs={"in_channels": 1, "num_classes": 10, "prior_sigma_1": 0.2})
