"""Samplers: M predictions of one network from M random draws, one ``vmap`` where TU loops.

A *sampler* is a hashable object with ``num_samples: int`` and ``draw(variables, key) -> (variables_m,
rngs_m)``; the forward pass maps ``model.apply(variables_m, x, train=False, rngs=rngs_m)`` over
``num_samples`` keys split from one key, giving ``[M, B, C]`` (the evaluation path then sees an
ensemble). :func:`sample_predict` is that map until ``jaxuq.forward`` takes samplers.

- :class:`MCDropout` / :func:`mc_dropout` — TU ``mc_dropout(model, num_estimators, last_layer, on_batch)``:
  the selected :class:`jaxuq.nn.Dropout` layers draw masks at evaluation (``'mc_dropout'`` rng), BatchNorm
  and the other layers stay in eval mode. :func:`mc_dropout_predict` is the one-call form.
- :class:`BayesSampler` — TU ``StochasticModel``'s evaluation: every forward draws new weights in the
  Bayesian layers (``jaxuq.nn.bayesian``, ``'bayes'`` rng).
- :func:`elbo_value` — TU ``ELBOLoss.forward``: ``num_samples`` training forwards with fresh noise keys,
  vmapped, and their KL terms (``jaxuq.losses.bayesian``).

Layout: TU returns ``[(M B), C]`` (``torch.cat`` of the samples, or one forward on the input repeated
M times with ``on_batch=True``); here every sampler gives ``[M, B, C]``, whichever ``on_batch``.
``on_batch`` only chooses how the samples are lowered: ``True`` -> ``jax.vmap`` (all M at once, more
memory), ``False`` -> ``lax.map`` (one at a time). Both give the same numbers from the same key.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp

from jaxuq.losses.bayesian import ELBOLoss, kl_divergence
from jaxuq.nn.bayesian import EPS, KL
from jaxuq.nn.bayesian import RNG as BAYES_RNG
from jaxuq.nn.dropout import MC_FLAGS, MC_RNG, Dropout

__all__ = [
    "BayesSampler",
    "MCDropout",
    "elbo_value",
    "find_layers",
    "mc_dropout",
    "mc_dropout_predict",
    "sample_predict",
]


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def find_layers(model, variables, x, cls) -> list[tuple[tuple[str, ...], object]]:
    """``[(path, module)]`` of the ``cls`` layers that ``model.apply(variables, x, train=False)`` calls,
    in first-call order (traced with ``jax.eval_shape``: nothing is computed)."""
    found: dict = {}

    def record(mdl, method_name):
        if isinstance(mdl, cls) and method_name == "__call__":
            found.setdefault(tuple(mdl.path), mdl)
        return False

    jax.eval_shape(lambda v, a: model.apply(v, a, train=False, capture_intermediates=record), variables, x)
    return list(found.items())


def _flags(paths) -> dict:
    """``{a: {b: {"on": True}}}`` for the paths ``(a, b)``: the MC_FLAGS collection."""
    tree: dict = {}
    for path in paths:
        node = tree
        for name in path:
            node = node.setdefault(name, {})
        node["on"] = jnp.ones((), jnp.bool_)
    return tree


@dataclasses.dataclass(frozen=True)
class MCDropout:
    """MC Dropout sampler: the dropout layers at ``layers`` (module paths) draw masks at evaluation.

    Build it with :func:`mc_dropout`, which finds the layers. ``draw`` adds the ``mc_dropout`` flags
    to the variables and returns ``rngs={"mc_dropout": key}``.
    """

    num_estimators: int
    layers: tuple[tuple[str, ...], ...]
    on_batch: bool = True

    def __post_init__(self):
        _check_count(self.num_estimators, "num_estimators")
        if not self.layers:
            raise ValueError("MCDropout needs at least one dropout layer path")

    @property
    def num_samples(self) -> int:
        return self.num_estimators

    def draw(self, variables, key):
        return {**variables, MC_FLAGS: _flags(self.layers)}, {MC_RNG: key}


def mc_dropout(model, variables, x, num_estimators: int, last_layer: bool = False,
               on_batch: bool = True) -> MCDropout:
    """TU ``mc_dropout(model, num_estimators, last_layer, on_batch)`` as a sampler for ``model``.

    ``x``: a sample input ``[B, ...]`` (only its shape is used) to find the :class:`jaxuq.nn.Dropout`
    layers. ``last_layer``: only the last one called (TU: the last registered dropout module; the same
    layer for TU's models). Raises ValueError when the model has no dropout layer or when every
    selected layer has rate 0 (TU's checks), TypeError/ValueError for ``num_estimators`` not an int >= 1.
    """
    _check_count(num_estimators, "num_estimators")
    layers = find_layers(model, variables, x, Dropout)
    if not layers:
        raise ValueError(
            f"mc_dropout: {type(model).__name__} has no jaxuq.nn.Dropout layer; MC Dropout needs a model "
            "built with dropout layers (e.g. dropout_rate > 0)"
        )
    if last_layer:
        layers = layers[-1:]
    if not any(mdl.rate > 0 for _, mdl in layers):
        rates = {"/".join(p): mdl.rate for p, mdl in layers}
        raise ValueError(f"mc_dropout: at least one dropout layer must have a rate > 0, got {rates}")
    return MCDropout(num_estimators, tuple(p for p, _ in layers), bool(on_batch))


@dataclasses.dataclass(frozen=True)
class BayesSampler:
    """TU ``StochasticModel`` evaluation: each of the ``num_samples`` forwards draws new weights in the
    Bayesian layers (``rngs={"bayes": key}``). ``on_batch`` as for :class:`MCDropout`."""

    num_samples: int
    on_batch: bool = True

    def __post_init__(self):
        _check_count(self.num_samples, "num_samples")

    def draw(self, variables, key):
        return variables, {BAYES_RNG: key}


@partial(jax.jit, static_argnames=("model", "sampler"))
def sample_predict(model, variables, x, sampler, key):
    """``[M, B, C]``: ``model`` evaluated once per key of ``split(key, sampler.num_samples)``, through
    ``sampler.draw``; vmapped (``sampler.on_batch``, default) or ``lax.map``-ped."""
    keys = jax.random.split(key, sampler.num_samples)

    def one(k):
        v, rngs = sampler.draw(variables, k)
        return model.apply(v, x, train=False, rngs=rngs)

    return jax.vmap(one)(keys) if getattr(sampler, "on_batch", True) else jax.lax.map(one, keys)


def mc_dropout_predict(model, variables, x, num_estimators: int, key, last_layer: bool = False,
                       on_batch: bool = True):
    """MC Dropout predictions ``[M, B, C]`` of ``model`` on ``x [B, ...]`` (see :func:`mc_dropout`)."""
    sampler = mc_dropout(model, variables, x, num_estimators, last_layer, on_batch)
    return sample_predict(model, variables, x, sampler, key)


def elbo_value(loss: ELBOLoss, model, variables, x, y, key, noise=None, train: bool = True):
    """TU ``ELBOLoss.forward``: ``(value, aux)`` from ``loss.num_samples`` forwards of ``model``.

    Sample s uses ``split(split(key, S)[s])`` as its ``'bayes'`` and ``'dropout'`` keys, or the injected
    ``noise[s]`` (a ``bayes_eps`` tree with a leading ``[S]`` axis) for the Bayesian layers. Without
    ``batch_stats`` the samples are one ``vmap``; with them (train mode) a ``lax.scan``, because TU's
    sequential forwards update the running statistics one after the other.
    ``aux``: ``outputs [S, B, C]``, ``kl [S]``, ``batch_stats`` (updated, or None).
    Differentiate with ``jax.grad(lambda p: elbo_value(loss, model, {**v, "params": p}, ...)[0])``.
    """
    keys = jax.random.split(key, loss.num_samples)
    stats = (variables.get("batch_stats") or None) if train else None

    def one(batch_stats, k, eps):
        kb, kd = jax.random.split(k)
        v = dict(variables)
        if batch_stats is not None:
            v["batch_stats"] = batch_stats
        if eps is not None:
            v[EPS] = eps
        mutable = [KL] + (["batch_stats"] if batch_stats is not None else [])
        out, state = model.apply(v, x, train=train, rngs={BAYES_RNG: kb, "dropout": kd}, mutable=mutable)
        return state.get("batch_stats", batch_stats), (out, kl_divergence(state[KL]))

    if stats is None:
        outs, kls = jax.vmap(lambda k, e: one(None, k, e)[1])(keys, noise)
    else:
        stats, (outs, kls) = jax.lax.scan(lambda s, ke: one(s, *ke), stats, (keys, noise))
    return loss(outs, y, kls), {"outputs": outs, "kl": kls, "batch_stats": stats}
