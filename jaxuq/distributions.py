"""The distribution families of TU 0.13.0's probabilistic regression as pure functions of a parameter
dict (``torch.distributions`` numerics, float32).

A predictive distribution is ``(family, params)``: ``params`` is the dict a head of
:mod:`jaxuq.nn.distributions` returns (TU's keys), every value ``[..., D]`` (D: the event dimension):

===========  =======================================  ==============================================
family       params (TU's names)                      torch / TU class
===========  =======================================  ==============================================
"normal"     loc, scale > 0                           ``Normal``
"laplace"    loc, scale > 0                           ``Laplace``
"cauchy"     loc, scale > 0                           ``Cauchy``
"gamma"      concentration > 0, rate > 0              ``Gamma`` (support y >= 0)
"student"    loc, scale > 0, df > 0                   ``TUStudentT`` (cdf/icdf: scipy, as TU)
"nig"        loc, lmbda > 0, alpha >= 1, beta > 0     TU's ``NormalInverseGamma``
===========  =======================================  ==============================================

Functions (elementwise over ``[..., D]``): :func:`log_prob` (TU's routine wraps the distribution in
``Independent(., 1)``: sum it over the last axis for the joint log-density), :func:`mean`,
:func:`mode`, :func:`cdf`, :func:`icdf`; :func:`check_params` validates user input at the boundary.
Each follows torch's formula and operation order (``Normal.icdf = loc + scale * erfinv(2p - 1) *
sqrt(2)``, ...). ``lgamma`` is torch's (:mod:`jaxuq._special`). The Student-t ``cdf``/``icdf`` call
scipy's ``stdtr``/``stdtrit`` on the host through ``jax.pure_callback`` (jittable), exactly as TU's
``TUStudentT`` does. ``gamma`` and ``nig`` have no ``icdf`` in TU (:func:`has_icdf`), ``nig`` no mode;
:func:`mean` of ``nig`` is its ``loc`` (TU's "improper mean").

A deep ensemble's predictive distribution is the uniform mixture of its members
(:func:`mixture_log_prob`, :func:`mixture_cdf`; member axis 0).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special as sc

from jaxuq._special import lgamma

__all__ = ["FAMILIES", "PARAMS", "cdf", "check_family", "check_params", "has_icdf", "icdf", "log_prob",
           "mean", "mixture_cdf", "mixture_log_prob", "mode", "softplus"]

F32 = jnp.float32
#: family -> the parameter names of its dict, in TU's order
PARAMS = {
    "normal": ("loc", "scale"),
    "laplace": ("loc", "scale"),
    "cauchy": ("loc", "scale"),
    "gamma": ("concentration", "rate"),
    "student": ("loc", "scale", "df"),
    "nig": ("loc", "lmbda", "alpha", "beta"),
}
FAMILIES = tuple(PARAMS)
# parameter -> (lower bound, bound included): torch's arg_constraints
_POSITIVE = {"scale": (0.0, False), "concentration": (0.0, False), "rate": (0.0, False), "df": (0.0, False),
             "lmbda": (0.0, False), "alpha": (1.0, True), "beta": (0.0, False)}
_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))


def check_family(family) -> str:
    """``family`` if it is a known family name, else ``TypeError`` / ``ValueError`` naming it."""
    if not isinstance(family, str):
        raise TypeError(f"`dist_family` must be a str, got {type(family).__name__} {family!r}")
    if family not in PARAMS:
        raise ValueError(f"`dist_family` must be one of {FAMILIES}, got {family!r}")
    return family


def check_params(family: str, params, name: str = "params") -> dict:
    """Validate a parameter dict at the boundary: exactly the family's keys, one shape, float, finite,
    and torch's constraints (scales > 0, ``alpha >= 1``, ...). Values are checked only when concrete
    (skipped under ``jit``). Returns ``{key: float32 array}``."""
    check_family(family)
    if not isinstance(params, dict):
        raise TypeError(f"`{name}` must be a dict of {family} parameters {PARAMS[family]}, got "
                        f"{type(params).__name__}")
    if set(params) != set(PARAMS[family]):
        raise ValueError(f"`{name}` of a {family!r} distribution needs the keys {PARAMS[family]}, got "
                         f"{tuple(params)}")
    out = {k: jnp.asarray(params[k]) for k in PARAMS[family]}
    shapes = {k: v.shape for k, v in out.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"`{name}`: every parameter must have the same shape, got {shapes}")
    for k, v in out.items():
        if not jnp.issubdtype(v.dtype, jnp.floating):
            raise TypeError(f"`{name}[{k!r}]` must be floating, got dtype {v.dtype}")
        if isinstance(v, jax.core.Tracer):
            continue
        a = np.asarray(v, np.float32)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"`{name}[{k!r}]` contains NaN/inf")
        if k in _POSITIVE:
            low, closed = _POSITIVE[k]
            bad = a < low if closed else a <= low
            if np.any(bad):
                raise ValueError(f"`{name}[{k!r}]` must be {'>=' if closed else '>'} {low:g} ({family}), got "
                                 f"{a[bad].min():g} ({int(bad.sum())} value(s))")
    return {k: v.astype(F32) for k, v in out.items()}


def softplus(x):
    """torch's ``F.softplus`` (beta 1, threshold 20): ``x`` above 20, ``log1p(exp(x))`` below."""
    return jnp.where(x > 20.0, x, jnp.log1p(jnp.exp(jnp.minimum(x, 20.0))))


# ----------------------------------------------------------------------------- log-densities
def log_prob(family: str, p: dict, y):
    """Elementwise log-density ``[..., D]`` of ``y`` (torch's ``log_prob``; sum the last axis for TU's
    ``Independent(., 1)``)."""
    if family in ("normal", "laplace", "cauchy", "student"):
        loc, scale = p["loc"], p["scale"]
        if family == "normal":
            return -((y - loc) ** 2) / (2 * scale**2) - jnp.log(scale) - _LOG_SQRT_2PI
        if family == "laplace":
            return -jnp.log(2 * scale) - jnp.abs(y - loc) / scale
        if family == "cauchy":
            return -math.log(math.pi) - jnp.log(scale) - jnp.log1p(((y - loc) / scale) ** 2)
        df = p["df"]
        z = (y - loc) / scale
        norm = (jnp.log(scale) + 0.5 * jnp.log(df) + 0.5 * math.log(math.pi) + lgamma(0.5 * df)
                - lgamma(0.5 * (df + 1.0)))
        return -0.5 * (df + 1.0) * jnp.log1p(z**2 / df) - norm
    if family == "gamma":
        c, r = p["concentration"], p["rate"]
        return jax.scipy.special.xlogy(c, r) + jax.scipy.special.xlogy(c - 1, y) - r * y - lgamma(c)
    if family == "nig":
        loc, lmbda, alpha, beta = p["loc"], p["lmbda"], p["alpha"], p["beta"]
        gam = 2 * beta * (1 + lmbda)
        return (-0.5 * jnp.log(math.pi / lmbda) + alpha * jnp.log(gam)
                - (alpha + 0.5) * jnp.log(gam + lmbda * (y - loc) ** 2) - lgamma(alpha) + lgamma(alpha + 0.5))
    raise ValueError(f"unknown distribution family {family!r}")


def mixture_log_prob(family: str, p: dict, y):
    """Joint log-density ``[N]`` of ``y [N, D]`` under the uniform mixture of the members' ``Independent``
    distributions (``p`` leaves ``[M, N, D]``): ``logsumexp_m(sum_d log p_m) - log M`` (torch's
    ``MixtureSameFamily(Categorical(ones(M)), Independent(., 1))``)."""
    lp = jnp.sum(log_prob(family, p, y[None]), axis=-1)
    return jax.nn.logsumexp(lp, axis=0) - jnp.log(jnp.float32(lp.shape[0]))


# ----------------------------------------------------------------------------- point estimates
def mean(family: str, p: dict):
    """torch's ``mean`` (Cauchy: NaN; Student-t: NaN where ``df <= 1``; NIG: ``loc``, TU's improper mean)."""
    if family in ("normal", "laplace", "nig"):
        return p["loc"]
    if family == "cauchy":
        return jnp.full_like(p["loc"], jnp.nan)
    if family == "student":
        return jnp.where(p["df"] <= 1, jnp.nan, p["loc"])
    if family == "gamma":
        return p["concentration"] / p["rate"]
    raise ValueError(f"unknown distribution family {family!r}")


def mode(family: str, p: dict):
    """torch's ``mode`` (Gamma: ``max((c - 1) / rate, 0)``); NIG has none (``ValueError``, as TU raises)."""
    if family in ("normal", "laplace", "cauchy", "student"):
        return p["loc"]
    if family == "gamma":
        return jnp.maximum((p["concentration"] - 1) / p["rate"], 0.0)
    raise ValueError(f"the {family!r} distribution has no mode (TU: NotImplementedError); use the mean")


# ----------------------------------------------------------------------------- cdf / icdf
def _host_f32(fn):
    """An elementwise scipy function of ``(df, x)`` called through ``jax.pure_callback`` in float32 (as
    TU calls it on the tensors' float32 numpy arrays)."""

    def host(df, x):
        return np.asarray(fn(np.asarray(df, np.float32), np.asarray(x, np.float32)), np.float32)

    def call(df, x):
        df, x = jnp.broadcast_arrays(jnp.asarray(df, F32), jnp.asarray(x, F32))
        out = jax.ShapeDtypeStruct(df.shape, F32)
        return jax.pure_callback(host, out, df, x, vmap_method="broadcast_all")

    return call


_stdtr, _stdtrit = _host_f32(sc.stdtr), _host_f32(sc.stdtrit)


def has_icdf(family: str) -> bool:
    """Whether TU's distribution has an ``icdf`` (QCE is NaN for the others, as in TU)."""
    return family in ("normal", "laplace", "cauchy", "student")


def icdf(family: str, p: dict, q):
    """torch's ``icdf`` at probability ``q`` (broadcast against the parameters); ``ValueError`` for
    ``gamma`` and ``nig`` (TU: ``NotImplementedError``)."""
    if not has_icdf(family):
        raise ValueError(f"the {family!r} distribution has no icdf in TU 0.13.0")
    loc, scale = p["loc"], p["scale"]
    if family == "normal":
        return loc + scale * jax.scipy.special.erfinv(2 * q - 1) * math.sqrt(2)
    if family == "laplace":
        term = q - 0.5
        return loc - scale * jnp.sign(term) * jnp.log1p(-2 * jnp.abs(term))
    if family == "cauchy":
        return jnp.tan(math.pi * (q - 0.5)) * scale + loc
    return _stdtrit(p["df"], q) * scale + loc


def cdf(family: str, p: dict, y):
    """torch's ``cdf`` (Student-t: scipy ``stdtr``, as TU's ``TUStudentT``); the families with an
    :func:`icdf` only."""
    if not has_icdf(family):
        raise ValueError(f"the {family!r} distribution has no icdf in TU 0.13.0 (no QCE)")
    loc, scale = p["loc"], p["scale"]
    if family == "normal":
        return 0.5 * (1 + jax.scipy.special.erf((y - loc) * (1 / scale) / math.sqrt(2)))
    if family == "laplace":
        return 0.5 - 0.5 * jnp.sign(y - loc) * jnp.expm1(-jnp.abs(y - loc) / scale)
    if family == "cauchy":
        return jnp.arctan((y - loc) / scale) / math.pi + 0.5
    return _stdtr(p["df"], (y - loc) / scale)


def mixture_cdf(family: str, p: dict, y):
    """Marginal cdf ``[N, D]`` of the uniform mixture (``p`` leaves ``[M, N, D]``, ``y [N, D]``)."""
    return jnp.mean(cdf(family, p, y[None]), axis=0)
