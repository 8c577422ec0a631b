"""TU ``bayesian_lenet`` family (``StochasticModel(_LeNet with BayesConv2d / BayesLinear)``).

==================================  ======================================  ============
torch key (``core_model.`` stripped)  Flax leaf                               transform
==================================  ======================================  ============
conv{1,2}.weight_{mu,sigma}         params/conv{1,2}/weight_{mu,sigma}      oihw->hwio
conv{1,2}.bias_{mu,sigma}           params/conv{1,2}/bias_{mu,sigma}        id
fc{1,2,3}.weight_{mu,sigma}         params/fc{i}/weight_{mu,sigma}          .T
fc{1,2,3}.bias_{mu,sigma}           params/fc{i}/bias_{mu,sigma}            id
norm{1,2}.* (BatchNorm only)        params/norm{i}/{scale,bias}, batch_stats  id
<layer>.{weight,bias}_sampler.{mu,rho}  (consumed; must equal <layer>.*_{mu,sigma})
<layer>.{weight,bias}_prior_dist.*  (consumed; :func:`infer` reads the prior from them)
==================================  ======================================  ============
``weight_sigma`` holds TU's rho (sigma = log1p(exp(rho))). TU's ``state_dict`` lists every parameter
twice (the layer's ``weight_mu`` and its sampler's ``mu`` are one ``nn.Parameter``); the copies are
checked to be equal. The prior is not a parameter: it is a model argument (``prior_sigma_1``,
``prior_sigma_2``, ``prior_pi``), recovered by :func:`infer` from the ``*_prior_dist`` buffers.
"""

from __future__ import annotations

import numpy as np

from converters.mappings import Entry, apply_table, bn_entries, linear_to_dense, oihw_to_hwio
from jaxuq.models.bayesian_lenet import bayesian_lenet

__all__ = ["ARCHS", "check_copies", "infer", "layer_entries", "table", "torch_to_flax"]

CONVS, DENSES = ("conv1", "conv2"), ("fc1", "fc2", "fc3")
PREFIX = "core_model."
# TU's per-layer defaults (BayesConv2d / BayesLinear): prior_sigma_1, prior_sigma_2, prior_pi
DEFAULTS = {"conv": (0.1, 0.002, 1.0), "dense": (0.1, 0.4, 1.0)}
PRIOR_KEYS = ("prior_sigma_1", "prior_sigma_2", "prior_pi")


def _bayesian_lenet(**kw):

    return bayesian_lenet(**kw), (1, 28, 28, kw.get("in_channels", 1))


ARCHS = {"bayesian_lenet": _bayesian_lenet}


def _strip(sd: dict) -> dict:
    if sd and all(k.startswith(PREFIX) for k in sd):
        return {k[len(PREFIX):]: v for k, v in sd.items()}
    return dict(sd)


def layer_entries(name: str, conv: bool, path: tuple[str, ...] | None = None) -> dict:
    """The rows of one ``BayesConv2d`` / ``BayesLinear`` at torch prefix ``name`` (Flax module ``path``,
    default ``(name,)``), its sampler copies and prior buffers consumed."""
    w = (oihw_to_hwio, "oihw->hwio", 4) if conv else (linear_to_dense, ".T", 2)
    path = (name,) if path is None else path
    t = {}
    for part in ("mu", "sigma"):
        t[f"{name}.weight_{part}"] = Entry(("params", *path, f"weight_{part}"), *w)
        t[f"{name}.bias_{part}"] = Entry(("params", *path, f"bias_{part}"), torch_ndim=1)
    for kind in ("weight", "bias"):
        t[f"{name}.{kind}_sampler.mu"] = Entry(None, torch_ndim=w[2] if kind == "weight" else 1)
        t[f"{name}.{kind}_sampler.rho"] = Entry(None, torch_ndim=w[2] if kind == "weight" else 1)
        for buf in ("pi", "mus", "sigmas"):
            t[f"{name}.{kind}_prior_dist.{buf}"] = Entry(None, torch_ndim=1)
    return t


def table(model_name: str = "bayesian_lenet", norm: str = "none", **_) -> dict:
    t: dict = {}
    for i, name in enumerate(CONVS, 1):
        t.update(layer_entries(name, conv=True))
        if norm == "batchnorm":
            t.update(bn_entries(f"norm{i}", (f"norm{i}",)))
    for name in DENSES:
        t.update(layer_entries(name, conv=False))
    return t


def check_copies(sd: dict, source: str, names=CONVS + DENSES) -> None:
    """The sampler's ``mu``/``rho`` are the layer's ``*_mu``/``*_sigma`` (one parameter, two keys), for the
    layers ``names``."""
    bad = []
    for name in names:
        for kind in ("weight", "bias"):
            for copy, own in (("mu", "mu"), ("rho", "sigma")):
                a, b = sd.get(f"{name}.{kind}_sampler.{copy}"), sd.get(f"{name}.{kind}_{own}")
                if a is not None and b is not None and not np.array_equal(a, b):
                    bad.append(f"{name}.{kind}_sampler.{copy} != {name}.{kind}_{own}")
    if bad:
        raise ValueError(f"{source}: cannot convert: TU's duplicated parameters differ: {', '.join(bad)}")


def torch_to_flax(state_dict, template, source="<state_dict>"):
    sd = _strip(state_dict)
    check_copies(sd, source)
    norm = "batchnorm" if "batch_stats" in template else "none"
    return apply_table(sd, table(norm=norm), template, source)


def _prior_of(sd: dict, name: str) -> tuple[float, float, float]:
    sig = np.asarray(sd[f"{name}.weight_prior_dist.sigmas"], np.float32)
    pi = np.asarray(sd[f"{name}.weight_prior_dist.pi"], np.float32)
    return tuple(float(str(v)) for v in (sig[0], sig[1], pi[0]))  # float32's shortest decimal


def _prior_kwargs(sd: dict) -> dict | None:
    """TU factory arguments that give every layer's prior buffers, or None if none do."""
    kw = {}
    priors = {n: _prior_of(sd, n) for n in CONVS + DENSES}
    for j, key in enumerate(PRIOR_KEYS):
        conv = {priors[n][j] for n in CONVS}
        dense = {priors[n][j] for n in DENSES}
        if len(conv) > 1 or len(dense) > 1:
            return None
        c, d = conv.pop(), dense.pop()
        if np.isclose(c, DEFAULTS["conv"][j]) and np.isclose(d, DEFAULTS["dense"][j]):
            continue
        if not np.isclose(c, d):
            return None
        kw[key] = c
    return kw


def infer(sd):
    sd = _strip(sd)
    need = ("conv1.weight_mu", "conv2.weight_mu", "fc1.weight_mu", "fc3.weight_mu",
            *(f"{n}.weight_prior_dist.pi" for n in CONVS + DENSES))
    if not all(k in sd for k in need) or tuple(np.shape(sd["fc1.weight_mu"])) != (120, 256):
        return None
    groups = 6 // np.shape(sd["conv2.weight_mu"])[1]
    kw = {"in_channels": int(np.shape(sd["conv1.weight_mu"])[1] * groups),
          "num_classes": int(np.shape(sd["fc3.weight_mu"])[0])}
    if "norm1.weight" in sd:
        kw["norm"] = "batchnorm"
    if groups != 1:
        kw["groups"] = int(groups)
    prior = _prior_kwargs(sd)
    if prior is None:
        return None
    return "bayesian_lenet", {**kw, **prior}
